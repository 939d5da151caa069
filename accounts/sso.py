"""Single sign-on with an OpenID provider (mozilla-django-oidc), configured from the
environment (LLMPROXY_OIDC_*; docs/people.md).

The issuer's discovery document gives the endpoints. A person is found by their identity
(issuer + ``sub``), made on the first sign-in; their teams and staff flag follow their IdP
groups at every sign-in (the groups claim through LLMPROXY_OIDC_GROUP_TEAMS,
LLMPROXY_OIDC_STAFF_GROUPS, LLMPROXY_OIDC_SUPERUSER_GROUPS and the admin's IdP group
mappings). ``still_allowed`` asks the
IdP again, with the refresh token it gave at sign-in, whenever a sign-in token is refreshed:
a person disabled there gets no new token.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings

from accounts.models import Identity, IdpGroupMapping, Person, Team
from llmproxy.core import crypto

log = logging.getLogger(__name__)

DISCOVERY_SECONDS = 3600
# mozilla-django-oidc's endpoint settings, taken from the discovery document instead.
_DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_discovered: dict[str, tuple[float, dict]] = {}
_discovery_lock = threading.Lock()


class IdpUnavailable(Exception):
    """The identity provider could not be asked, or answered something unusable."""


def enabled() -> bool:
    return bool(settings.LLMPROXY_OIDC_ISSUER)


def _get_json(url: str, **kwargs) -> dict:
    try:
        response = httpx.get(url, timeout=settings.OIDC_TIMEOUT, **kwargs)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise IdpUnavailable(f"{url}: {exc}") from None
    if not isinstance(document, dict):
        raise IdpUnavailable(f"{url}: not a JSON object")
    return document


def discovery() -> dict:
    """The issuer's OpenID configuration, fetched once an hour per process."""
    issuer = settings.LLMPROXY_OIDC_ISSUER
    with _discovery_lock:
        cached = _discovered.get(issuer)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        document = _get_json(f"{issuer}/.well-known/openid-configuration")
        if str(document.get("issuer", "")).rstrip("/") != issuer:
            raise IdpUnavailable(
                f"the discovery document names issuer {document.get('issuer')!r}, "
                f"not LLMPROXY_OIDC_ISSUER {issuer!r}"
            )
        missing = [name for name in _DISCOVERED.values() if not document.get(name)]
        if missing:
            raise IdpUnavailable(f"the discovery document has no {', '.join(missing)}")
        _discovered[issuer] = (time.monotonic() + DISCOVERY_SECONDS, document)
        return document


def oidc_setting(attr: str, *default):
    """mozilla-django-oidc's settings, the endpoints from discovery."""
    if attr in _DISCOVERED:
        return discovery()[_DISCOVERED[attr]]
    return import_from_settings(attr, *default)


# --- Who may sign in, and what their groups give them ---------------------------------------


def refusal(claims: dict) -> str | None:
    """Why these claims may not sign in, or None."""
    email = str(claims.get("email") or "")
    if not claims.get("sub"):
        return "The identity provider sent no subject."
    if "@" not in email:
        return "The identity provider sent no email address."
    if claims.get("email_verified") is False:
        return f"{email} is not verified at the identity provider."
    domains = settings.LLMPROXY_OIDC_ALLOWED_DOMAINS
    if domains and email.rsplit("@", 1)[1].lower() not in domains:
        return f"People from {email.rsplit('@', 1)[1]} may not sign in here."
    return None


def groups_of(claims: dict) -> list[str]:
    value = claims.get(settings.LLMPROXY_OIDC_GROUPS_CLAIM) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return sorted({str(group) for group in value if group is not None})


@dataclass(frozen=True)
class Rule:
    """People in ``group`` at the IdP join ``team`` / are staff / are superusers."""

    group: str
    team: str | None = None
    staff: bool = False
    superuser: bool = False


def group_rules() -> list[Rule]:
    """The rules from the environment and the admin's IdP group mappings."""
    rules = [Rule(group, team=team) for group, team in settings.LLMPROXY_OIDC_GROUP_TEAMS]
    rules += [Rule(group, staff=True) for group in settings.LLMPROXY_OIDC_STAFF_GROUPS]
    rules += [Rule(group, superuser=True) for group in settings.LLMPROXY_OIDC_SUPERUSER_GROUPS]
    for mapping in IdpGroupMapping.objects.select_related("team"):
        team = mapping.team.name if mapping.team else None
        rules.append(Rule(mapping.idp_group, team, mapping.make_staff, mapping.make_superuser))
    return rules


@transaction.atomic
def apply_groups(user, groups: list[str]) -> None:
    """Teams named by a rule follow the groups (joined or left); other memberships, made
    by hand, stay. With any staff or superuser rule, those flags follow the groups too."""
    rules = group_rules()
    mine = [rule for rule in rules if rule.group in groups]
    managed = {rule.team for rule in rules if rule.team}
    wanted = {rule.team for rule in mine if rule.team}
    teams = {team.name: team for team in Team.objects.filter(name__in=managed)}
    for name in sorted(wanted - set(teams)):
        teams[name] = Team.objects.create(name=name)
    user.teams.remove(*[teams[name] for name in managed - wanted if name in teams])
    user.teams.add(*[teams[name] for name in sorted(wanted)])
    flags = {"is_superuser": user.is_superuser, "is_staff": user.is_staff}
    if any(rule.superuser for rule in rules):
        flags["is_superuser"] = any(rule.superuser for rule in mine)
    if any(rule.staff or rule.superuser for rule in rules):
        flags["is_staff"] = any(rule.staff or rule.superuser for rule in mine)
    if flags != {"is_superuser": user.is_superuser, "is_staff": user.is_staff}:
        for name, value in flags.items():
            setattr(user, name, value)
        user.save(update_fields=list(flags))
    person, _ = Person.objects.get_or_create(user=user)
    member_of = set(user.teams.values_list("pk", flat=True))
    if person.default_team_id not in member_of:
        first = next((teams[name] for name in sorted(wanted)), None)
        person.default_team = first or Team.objects.filter(pk__in=member_of).first()
        person.save(update_fields=["default_team"])


def _username(email: str) -> str:
    User = get_user_model()
    base = email.lower()[:140]
    name, number = base, 1
    while User.objects.filter(username=name).exists():
        number += 1
        name = f"{base}-{number}"
    return name


def sign_in(*, claims: dict, user=None, refresh_token: str | None) -> object:
    """The person for an IdP sign-in: found by identity (or ``user``, matched by email),
    else made; email, groups and the IdP's refresh token recorded; groups applied."""
    issuer = settings.LLMPROXY_OIDC_ISSUER
    with transaction.atomic():
        identity = (
            Identity.objects.select_related("user")
            .filter(issuer=issuer, subject=str(claims["sub"]))
            .first()
        )
        if identity is None:
            if user is None:
                email = str(claims["email"])
                user = get_user_model().objects.create_user(_username(email), email=email)
                user.first_name = str(claims.get("given_name") or claims.get("name") or "")[:150]
                user.last_name = str(claims.get("family_name") or "")[:150]
                user.set_unusable_password()
                user.save()
            identity = Identity(user=user, issuer=issuer, subject=str(claims["sub"]))
        user = identity.user
        _record(identity, claims, refresh_token)
        identity.signed_in_at = identity.checked_at
        identity.save()
        if user.email != claims["email"]:
            user.email = str(claims["email"])
            user.save(update_fields=["email"])
        apply_groups(user, identity.groups)
    return user


def _record(identity: Identity, claims: dict, refresh_token: str | None) -> None:
    identity.email = str(claims.get("email") or "")[:254]
    identity.groups = groups_of(claims)
    identity.checked_at = timezone.now()
    if refresh_token:
        identity.refresh_token = crypto.encrypt(refresh_token)


# --- At each sign-in token refresh ----------------------------------------------------------


def still_allowed(user) -> bool:
    """May this person still have sign-in tokens? Inactive people may not. A person who
    signed in through the IdP is asked about there: their IdP refresh token is exchanged and
    userinfo read; a refusal (disabled, deleted, the domain no longer allowed) says no, and so
    does an IdP that cannot be reached. Groups are applied again on the way."""
    if not user.is_active:
        return False
    if not enabled():
        return True
    identity = Identity.objects.filter(user=user, issuer=settings.LLMPROXY_OIDC_ISSUER).first()
    if identity is None:
        return True  # a local account
    if not identity.refresh_token:
        # The IdP gave no refresh token (no offline_access): nothing to ask it with.
        return True
    try:
        return _ask_idp(identity.pk)
    except IdpUnavailable as exc:
        log.warning("sign-in refresh of %s refused: the IdP: %s", user.get_username(), exc)
        return False


@transaction.atomic
def _ask_idp(identity_id: int) -> bool:
    # One question at a time per identity: an IdP that rotates refresh tokens would take a
    # second use of the old one for a replay.
    identity = Identity.objects.select_for_update().select_related("user").get(pk=identity_id)
    tokens = _refresh_at_idp(crypto.decrypt(identity.refresh_token))
    if tokens is None:
        return False
    access = tokens.get("access_token")
    if not isinstance(access, str):
        raise IdpUnavailable("the token answer has no access_token")
    claims = _userinfo(access)
    if claims is None or str(claims.get("sub")) != identity.subject or refusal(claims):
        return False
    _record(identity, claims, tokens.get("refresh_token"))
    identity.save()
    apply_groups(identity.user, identity.groups)
    return True


def _refresh_at_idp(refresh_token: str) -> dict | None:
    """The IdP's new tokens, or None when it refuses the refresh token (4xx)."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    client_id, secret = settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET
    auth = None
    if settings.OIDC_TOKEN_USE_BASIC_AUTH:
        auth = httpx.BasicAuth(client_id, secret)
    else:
        data |= {"client_id": client_id, "client_secret": secret}
    try:
        response = httpx.post(
            discovery()["token_endpoint"], data=data, auth=auth, timeout=settings.OIDC_TIMEOUT
        )
    except httpx.HTTPError as exc:
        raise IdpUnavailable(f"token endpoint: {exc}") from None
    if 400 <= response.status_code < 500:
        return None
    if response.status_code != 200:
        raise IdpUnavailable(f"token endpoint answered {response.status_code}")
    try:
        return dict(response.json())
    except ValueError:
        raise IdpUnavailable("token endpoint answered no JSON") from None


def _userinfo(access_token: str) -> dict | None:
    try:
        response = httpx.get(
            discovery()["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=settings.OIDC_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        raise IdpUnavailable(f"userinfo: {exc}") from None
    if 400 <= response.status_code < 500:
        return None
    if response.status_code != 200:
        raise IdpUnavailable(f"userinfo answered {response.status_code}")
    try:
        return dict(response.json())
    except ValueError:
        raise IdpUnavailable("userinfo answered no JSON object") from None


# --- The authentication backend -------------------------------------------------------------


class OidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's code flow, with the endpoints from discovery, the person found
    by identity rather than email, the issuer and audience of the ID token checked, and the
    IdP's refresh token kept for ``still_allowed``."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args, **kwargs) -> None:
        # Django makes a backend per authenticate() call, password logins included: the
        # IdP is asked only when this backend answers a callback.
        self.UserModel = get_user_model()
        self.token_info: dict = {}

    def authenticate(self, request, **kwargs):
        if not enabled() or request is None or "code" not in request.GET:
            return None
        super().__init__()
        return super().authenticate(request, **kwargs)

    def get_user(self, user_id):
        return ModelBackend.get_user(self, user_id)  # inactive people have no session

    def get_token(self, payload):
        self.token_info = super().get_token(payload)
        return self.token_info

    def verify_token(self, token, **kwargs):
        payload = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if str(payload.get("iss", "")).rstrip("/") != settings.LLMPROXY_OIDC_ISSUER:
            raise SuspiciousOperation("ID token from another issuer")
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token for another client")
        return payload

    def verify_claims(self, claims) -> bool:
        reason = refusal(claims)
        if reason:
            messages.error(self.request, reason)
            return False
        return True

    def filter_users_by_claims(self, claims):
        identity = Identity.objects.filter(
            issuer=settings.LLMPROXY_OIDC_ISSUER, subject=str(claims["sub"])
        ).first()
        if identity is not None:
            return self.UserModel.objects.filter(pk=identity.user_id)
        # A person the admin made before their first sign-in, by the verified email.
        if claims.get("email_verified") is True:
            matches = self.UserModel.objects.filter(
                email__iexact=claims["email"], identities__isnull=True
            )
            if matches.count() == 1:
                return matches
        return self.UserModel.objects.none()

    def create_user(self, claims):
        return sign_in(claims=claims, refresh_token=self.token_info.get("refresh_token"))

    def update_user(self, user, claims):
        return sign_in(claims=claims, user=user, refresh_token=self.token_info.get("refresh_token"))
