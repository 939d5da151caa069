"""The OAuth 2.0 device grant (RFC 8628) behind Claude Code's /login and ``llmproxy login``.

A client starts a sign-in and gets a device code (secret, ≥ 256 bits, single use) and a
user code (``XXXX-XXXX``, consonants only: no vowels make no words, no 0/O or 1/I). The
person enters or confirms the user code on the /device page, signed in to the web side, and
approves or denies it; the client polls the token endpoint with the device code until then.
Both codes are stored as HMAC digests, like keys. Approval issues sign-in tokens
(accounts/signin.py) to the person who approved.

Why not django-oauth-toolkit or authlib: both tie the device grant to a registered client
(``client_id`` required at the device authorization and token endpoints), and Claude Code
sends none (only ``surface=claude_code``); their tokens would also be another kind of
credential than the ``llmpa-`` tokens the gateway's policy cache already takes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts import keys, signin
from accounts.models import DeviceAuthorization
from accounts.signin import Issued, SignInError

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
_ATTEMPT_WINDOW = 15 * 60  # seconds over which wrong user codes are counted


@dataclass(frozen=True)
class Started:
    device_code: str
    user_code: str
    expires_in: int
    interval: int


def normalize_user_code(raw: str | None) -> str | None:
    """``XXXX-XXXX`` for what a person typed (any case, with or without the dash or
    spaces), or None when it cannot be a user code."""
    if not raw:
        return None
    code = "".join(ch for ch in raw.upper() if ch not in "- \t")
    if len(code) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in code):
        return None
    return f"{code[:4]}-{code[4:]}"


def _digest_of_device(device_code: str) -> str:
    return keys.key_digest("device:" + device_code)


def _digest_of_user(user_code: str) -> str:
    return keys.key_digest("user:" + user_code)


def _new_user_code() -> str:
    code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{code[:4]}-{code[4:]}"


def start(*, client: str, requested_from: str | None = None) -> Started:
    """A new pending sign-in for ``client`` (a SignInClient value)."""
    device_code = secrets.token_urlsafe(32)
    lifetime = settings.LLMPROXY_DEVICE_CODE_SECONDS
    interval = settings.LLMPROXY_DEVICE_POLL_SECONDS
    for _ in range(5):  # a user code is unique among live ones: 20^8 makes clashes rare
        user_code = _new_user_code()
        digest = _digest_of_user(user_code)
        if not DeviceAuthorization.objects.filter(user_digest=digest).exists():
            break
    else:  # pragma: no cover - five clashes in a row
        raise SignInError("temporarily_unavailable", "Could not make a user code; try again.")
    DeviceAuthorization.objects.create(
        client=client,
        device_digest=_digest_of_device(device_code),
        user_digest=digest,
        requested_from=requested_from,
        expires_at=timezone.now() + timedelta(seconds=lifetime),
        interval=interval,
    )
    return Started(device_code, user_code, lifetime, interval)


def find_pending(user_code: str) -> DeviceAuthorization | None:
    """The pending, unexpired sign-in a (normalized) user code names, or None."""
    return (
        DeviceAuthorization.objects.pending().filter(user_digest=_digest_of_user(user_code)).first()
    )


@transaction.atomic
def decide(*, user_code: str, person, approve: bool) -> DeviceAuthorization | None:
    """The person approves or denies a pending sign-in; None if the code names none (any
    more): a code can be decided once."""
    row = (
        DeviceAuthorization.objects.select_for_update()
        .pending()
        .filter(user_digest=_digest_of_user(user_code))
        .first()
    )
    if row is None:
        return None
    row.status = DeviceAuthorization.APPROVED if approve else DeviceAuthorization.DENIED
    row.person = person
    row.decided_at = timezone.now()
    row.save(update_fields=["status", "person", "decided_at"])
    return row


def poll(*, device_code: str) -> Issued:
    """What the token endpoint answers a client polling with its device code: tokens once
    the person approved, else SignInError with RFC 8628's error."""
    error = _poll(device_code)
    if isinstance(error, SignInError):
        raise error
    return error


@transaction.atomic
def _poll(device_code: str) -> Issued | SignInError:
    # Errors are returned, not raised, so the poll's bookkeeping is committed with them.
    row = (
        DeviceAuthorization.objects.select_for_update()
        .select_related("person")
        .filter(device_digest=_digest_of_device(device_code))
        .first()
    )
    if row is None:
        return SignInError("invalid_grant", "Unknown device code.")
    now = timezone.now()
    if row.status == DeviceAuthorization.USED:
        return SignInError("expired_token", "This device code was already used; sign in again.")
    if row.expires_at <= now:
        return SignInError("expired_token", "The code expired before it was approved.")
    too_fast = row.last_polled_at is not None and (now - row.last_polled_at) < timedelta(
        seconds=max(row.interval - 1, row.interval / 2)
    )
    row.last_polled_at = now
    if too_fast:
        row.save(update_fields=["last_polled_at"])
        return SignInError("slow_down", f"Poll at most every {row.interval} seconds.")
    if row.status == DeviceAuthorization.DENIED:
        row.status = DeviceAuthorization.USED
        row.save(update_fields=["last_polled_at", "status"])
        return SignInError("access_denied", "The sign-in was denied.")
    if row.status == DeviceAuthorization.PENDING:
        row.save(update_fields=["last_polled_at"])
        return SignInError("authorization_pending", "Waiting for the person to approve.")
    row.status = DeviceAuthorization.USED
    if row.person is None or not row.person.is_active:
        row.save(update_fields=["last_polled_at", "status"])
        return SignInError("access_denied", "This account is disabled; ask an admin.")
    issued = signin.issue(person=row.person, client=row.client)
    row.family = issued.family
    row.save(update_fields=["last_polled_at", "status", "family"])
    return issued


# --- wrong user codes -----------------------------------------------------------------------


def _attempt_keys(subjects: list[str]) -> list[str]:
    return [f"llmproxy:device-attempts:{subject}" for subject in subjects]


def attempts_exhausted(subjects: list[str]) -> bool:
    """Has any of the subjects (a person, an address) entered too many wrong codes?"""
    limit = settings.LLMPROXY_DEVICE_CODE_ATTEMPTS
    counts = cache.get_many(_attempt_keys(subjects))
    return any(int(count) >= limit for count in counts.values())


def count_wrong_code(subjects: list[str]) -> None:
    for key in _attempt_keys(subjects):
        if not cache.add(key, 1, timeout=_ATTEMPT_WINDOW):
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=_ATTEMPT_WINDOW)
