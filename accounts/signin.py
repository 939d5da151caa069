"""Sign-in tokens: what a person gets from signing in with Claude Code's /login or
``llmproxy login`` (the OAuth device grant), instead of a long-lived key.

An access token is short-lived (LLMPROXY_ACCESS_TOKEN_SECONDS, one hour by default) and is
taken by the proxy like a key; a refresh token (LLMPROXY_REFRESH_TOKEN_SECONDS) is swapped,
once, for a new pair. Both are stored as prefix + HMAC digest. The tokens of one sign-in
share a family: using a refresh token a second time (it was stolen, or replayed) revokes
the whole family, as OAuth 2.0 Security BCP asks. A person who is no longer active gets no
new tokens, and their access tokens stop working at the gateway's next policy refresh.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts import keys, sso
from accounts.models import SignInToken


class SignInError(Exception):
    """An OAuth error: ``code`` is the RFC 6749 / 8628 error name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Issued:
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token lives
    family: str
    email: str = ""  # the person's, for the client to show


def _token(person, client: str, kind: str, family: str, lifetime: int) -> tuple[SignInToken, str]:
    marker = keys.ACCESS_MARKER if kind == SignInToken.ACCESS else keys.REFRESH_MARKER
    secret = keys.generate_secret(marker)
    token = SignInToken.objects.create(
        person=person,
        client=client,
        kind=kind,
        family=family,
        prefix=keys.key_prefix(secret),
        digest=keys.key_digest(secret),
        expires_at=timezone.now() + timedelta(seconds=lifetime),
    )
    return token, secret


@transaction.atomic
def issue(*, person, client: str, family: str | None = None) -> Issued:
    """A new access and refresh token for ``person`` (the caller checked they may have one)."""
    family = family or secrets.token_hex(16)
    access_lifetime = settings.LLMPROXY_ACCESS_TOKEN_SECONDS
    _, access = _token(person, client, SignInToken.ACCESS, family, access_lifetime)
    _, refresh = _token(
        person, client, SignInToken.REFRESH, family, settings.LLMPROXY_REFRESH_TOKEN_SECONDS
    )
    return Issued(access, refresh, access_lifetime, family, getattr(person, "email", "") or "")


def find(secret: str, kind: str) -> SignInToken | None:
    """The token for a presented secret (revoked and expired ones included), or None."""
    marker = keys.ACCESS_MARKER if kind == SignInToken.ACCESS else keys.REFRESH_MARKER
    if not keys.looks_like(secret, marker):
        return None
    token = (
        SignInToken.objects.select_related("person")
        .filter(digest=keys.key_digest(secret), kind=kind)
        .first()
    )
    if token is None or not keys.digest_matches(secret, token.digest):
        return None
    return token


def refresh(*, secret: str, still_allowed=None) -> Issued:
    """Swap a refresh token for a new pair (rotation). A refresh token used twice revokes
    its family; a person no longer allowed (inactive, or refused by ``still_allowed``, by
    default ``accounts.sso.still_allowed``, which asks the identity provider) gets
    ``invalid_grant`` and their family is revoked."""
    token = find(secret, SignInToken.REFRESH)
    if token is None:
        raise SignInError("invalid_grant", "Unknown refresh token.")
    allowed = still_allowed or sso.still_allowed
    # The IdP is asked only for a refresh that would otherwise succeed.
    fresh = token.is_live and token.used_at is None
    if not token.person.is_active or (fresh and not allowed(token.person)):
        revoke_family(token.family, reason="person disabled")
        raise SignInError("invalid_grant", "This account is disabled; ask an admin.")
    with transaction.atomic():
        token = SignInToken.objects.select_for_update().get(pk=token.pk)
        replayed = token.used_at is not None
        if not replayed:
            if not token.is_live:
                raise SignInError("invalid_grant", "This sign-in has ended; sign in again.")
            token.used_at = timezone.now()
            token.save(update_fields=["used_at"])
            # The old access token stops at once: only the newest pair of a family is live.
            access = SignInToken.objects.filter(family=token.family, kind=SignInToken.ACCESS)
            _revoke(access, "refreshed")
            return issue(person=token.person, client=token.client, family=token.family)
    # Outside the transaction, so the revocation stands although the call fails.
    revoke_family(token.family, reason="refresh token replayed")
    raise SignInError("invalid_grant", "This refresh token was already used; sign in again.")


def revoke(*, secret: str) -> bool:
    """RFC 7009: revoke the token presented (access or refresh). Revoking a refresh token
    ends the whole sign-in. Unknown tokens are not an error."""
    for kind in (SignInToken.ACCESS, SignInToken.REFRESH):
        token = find(secret, kind)
        if token is None:
            continue
        if kind == SignInToken.REFRESH:
            revoke_family(token.family, reason="signed out")
        else:
            _revoke(SignInToken.objects.filter(pk=token.pk), "signed out")
        return True
    return False


def revoke_family(family: str, *, reason: str) -> int:
    return _revoke(SignInToken.objects.filter(family=family), reason)


def revoke_person(person, *, reason: str) -> int:
    return _revoke(SignInToken.objects.filter(person=person), reason)


def _revoke(tokens, reason: str) -> int:
    # Saved one by one so the policy cache of every gateway drops the access tokens.
    changed = 0
    for token in tokens.filter(revoked_at__isnull=True):
        token.revoked_at = timezone.now()
        token.revoked_reason = reason[:200]
        token.save(update_fields=["revoked_at", "revoked_reason"])
        changed += 1
    return changed
