"""State changes for keys and teams. Callers validate; these trust their input."""

from __future__ import annotations

import hmac
from datetime import datetime
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from accounts import keys
from accounts.models import (
    ApiKey,
    ApiToken,
    BudgetPeriod,
    KeySecretFingerprint,
    Person,
    ReserveMode,
    Team,
)


class KeySecretMismatch(Exception):
    """The digest secret is not the one the existing keys and API tokens were made with."""

    def __init__(self) -> None:
        super().__init__(
            "LLMPROXY_KEY_HMAC_SECRET (by default DJANGO_SECRET_KEY) is not the secret the "
            "existing keys and API tokens were made with, so the gateway would never accept a "
            "key or token made here: run this with the gateway's secret, or, if the secret was "
            "changed on purpose, run `manage.py resetkeysecret --yes` to record the new one "
            "(every key and token made with the old secret stops working)"
        )


def key_secret_matches() -> bool:
    """Whether this process's digest secret is the recorded one (or none is recorded yet)."""
    recorded = KeySecretFingerprint.objects.filter(pk=1).values_list("fingerprint", flat=True)
    stored = recorded.first()
    return stored is None or hmac.compare_digest(stored, keys.secret_fingerprint())


def check_key_secret() -> None:
    """Refuse to make a secret the gateway would not accept; the first call records the
    current digest secret's fingerprint, every later one compares against it."""
    current = keys.secret_fingerprint()
    row, _ = KeySecretFingerprint.objects.get_or_create(pk=1, defaults={"fingerprint": current})
    if not hmac.compare_digest(row.fingerprint, current):
        raise KeySecretMismatch


@transaction.atomic
def reset_key_secret() -> str:
    """Record the current digest secret as the one keys are made with (after a deliberate
    change). Returns what was recorded before: "none", "same" or "other"."""
    current = keys.secret_fingerprint()
    row = KeySecretFingerprint.objects.select_for_update().filter(pk=1).first()
    if row is None:
        KeySecretFingerprint.objects.create(pk=1, fingerprint=current)
        return "none"
    if hmac.compare_digest(row.fingerprint, current):
        return "same"
    row.fingerprint = current
    row.save(update_fields=["fingerprint", "recorded_at"])
    return "other"


def billed_team(*, key: ApiKey | None, person: Person | None) -> Team | None:
    """The team a call is billed to: the key's, else the person's default team (only one of
    the teams the person is in, so each call's spend counts in one team's ledger)."""
    if key is not None and key.team_id is not None:
        return key.team
    if person is not None and person.default_team_id is not None:
        return person.default_team
    return None


def person_of(user) -> Person:
    """The person's policy row, made on first need."""
    person, _ = Person.objects.get_or_create(user=user)
    return person


class NotAllowed(Exception):
    """A change the person asking may not make; the message says why."""


# What a key's owner may change: names and tags freely; limits only downwards.
OWNER_FREE = {"name", "tags"}
OWNER_LOWER = {"budget_usd", "rpm", "tpm", "max_concurrent"}
OWNER_NARROW = {"allowed_models", "allowed_endpoints"}  # empty means "all"


def check_owner_change(*, key: ApiKey, changes: dict) -> None:
    """A key's owner may tighten its policy but never loosen it."""
    for field, new in changes.items():
        old = getattr(key, field)
        if field in OWNER_FREE or new == old:
            continue
        if field in OWNER_LOWER and new is not None and (old is None or new <= old):
            continue
        if field in OWNER_NARROW and new and (not old or set(new) <= set(old)):
            continue
        if field == "allowed_tools" and set(new) <= set(old):
            continue
        if field == "allow_background" and new is False:
            continue
        if field == "expires_at" and new is not None and (old is None or new <= old):
            continue
        raise NotAllowed(f"A key's owner may not raise or widen {field}; ask an admin.")


@transaction.atomic
def create_key(
    *,
    name: str,
    owner: AbstractBaseUser | None = None,
    team: Team | None = None,
    allowed_models: list[str] | None = None,
    allowed_endpoints: list[str] | None = None,
    allowed_tools: list[str] | None = None,
    allow_background: bool = False,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    budget_usd: Decimal | None = None,
    budget_period: str = BudgetPeriod.MONTH,
    reserve_mode: str = ReserveMode.WORST,
    alert_webhook_url: str = "",
    expires_at: datetime | None = None,
    tags: list[str] | None = None,
    metadata: dict | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret: the only time the secret exists."""
    check_key_secret()
    secret = keys.generate_secret()
    key = ApiKey.objects.create(
        name=name,
        owner=owner,
        team=team,
        prefix=keys.key_prefix(secret),
        digest=keys.key_digest(secret),
        allowed_models=allowed_models or [],
        allowed_endpoints=allowed_endpoints or [],
        allowed_tools=allowed_tools or [],
        allow_background=allow_background,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        budget_usd=budget_usd,
        budget_period=budget_period,
        reserve_mode=reserve_mode,
        alert_webhook_url=alert_webhook_url,
        expires_at=expires_at,
        tags=tags or [],
        metadata=metadata or {},
    )
    return key, secret


def assign_new_secret(key: ApiKey) -> str:
    """Give an unsaved or existing key a fresh secret; the caller saves it."""
    check_key_secret()
    secret = keys.generate_secret()
    key.prefix = keys.key_prefix(secret)
    key.digest = keys.key_digest(secret)
    return secret


@transaction.atomic
def rotate_key(*, key: ApiKey) -> str:
    """Replace the secret; the old one stops working at once."""
    secret = assign_new_secret(key)
    key.save(update_fields=["prefix", "digest"])
    return secret


def revoke_keys(*, queryset, reason: str = "") -> int:
    """Revoke every still-active key in ``queryset``; returns how many changed."""
    now = timezone.now()
    changed = 0
    # Saved one by one so post_save invalidates the policy cache for each.
    for key in queryset.filter(revoked_at__isnull=True):
        key.revoked_at = now
        key.revoked_reason = reason[:200]
        key.save(update_fields=["revoked_at", "revoked_reason"])
        changed += 1
    return changed


def find_key(secret: str) -> ApiKey | None:
    """The key for a presented secret (revoked and expired keys included), or None."""
    if not keys.looks_like_key(secret):
        return None
    digest = keys.key_digest(secret)
    key = ApiKey.objects.select_related("team").filter(digest=digest).first()
    # The lookup is by digest; compare again in constant time so a future lookup by prefix
    # cannot turn into a timing oracle.
    if key is None or not keys.digest_matches(secret, key.digest):
        return None
    return key


@transaction.atomic
def create_api_token(*, user, name: str) -> tuple[ApiToken, str]:
    """A management API token for ``user``; the secret exists only in the return value."""
    check_key_secret()
    secret = keys.generate_secret(keys.TOKEN_MARKER)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=keys.key_prefix(secret), digest=keys.key_digest(secret)
    )
    return token, secret


def find_api_token(secret: str) -> ApiToken | None:
    if not secret.startswith(keys.TOKEN_MARKER) or len(secret) > 200:
        return None
    token = ApiToken.objects.select_related("user").filter(digest=keys.key_digest(secret)).first()
    if token is None or not keys.digest_matches(secret, token.digest):
        return None
    return token
