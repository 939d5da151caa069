"""Virtual key secrets: generation, HMAC digests and constant-time checks.

A key looks like ``llmp-<43 url-safe chars>``. The database keeps the first
``PREFIX_LENGTH`` characters (to tell keys apart in lists) and the HMAC-SHA256 of the whole
key, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings

KEY_MARKER = "llmp-"
TOKEN_MARKER = "llmpt-"  # management API tokens: never valid on the proxy
ACCESS_MARKER = "llmpa-"  # sign-in access tokens: taken by the proxy like keys
REFRESH_MARKER = "llmpr-"  # sign-in refresh tokens: only the token endpoint takes them
PREFIX_LENGTH = 12
_SECRET_BYTES = 32
_MAX_KEY_LENGTH = 200
_FINGERPRINT_LABEL = b"llmproxy key fingerprint"


def generate_secret(marker: str = KEY_MARKER) -> str:
    return marker + secrets.token_urlsafe(_SECRET_BYTES)


def key_prefix(secret: str) -> str:
    return secret[:PREFIX_LENGTH]


def key_digest(secret: str) -> str:
    return hmac.new(
        settings.LLMPROXY_KEY_HMAC_SECRET.encode(), secret.encode(), hashlib.sha256
    ).hexdigest()


def secret_fingerprint() -> str:
    """Tells digest secrets apart without revealing them: HMAC(secret, a fixed label)."""
    return hmac.new(
        settings.LLMPROXY_KEY_HMAC_SECRET.encode(), _FINGERPRINT_LABEL, hashlib.sha256
    ).hexdigest()


def looks_like_key(secret: str) -> bool:
    return secret.startswith(KEY_MARKER) and len(secret) <= _MAX_KEY_LENGTH


def looks_like(secret: str, marker: str) -> bool:
    return secret.startswith(marker) and len(secret) <= _MAX_KEY_LENGTH


def digest_matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(key_digest(secret), stored_digest)
