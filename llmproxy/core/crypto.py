"""Encryption at rest for provider credentials (Fernet, rotatable keys)."""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class CredentialError(Exception):
    """A stored credential cannot be decrypted with the configured keys."""


def _fernet_key(material: str) -> bytes:
    # Any secret string becomes a valid Fernet key; real Fernet keys pass through unchanged.
    try:
        if len(base64.urlsafe_b64decode(material.encode())) == 32:
            return material.encode()
    except ValueError:
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest())


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(k)) for k in keys])


def encrypt(plaintext: str) -> str:
    return _fernet(tuple(settings.LLMPROXY_ENCRYPTION_KEYS)).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet(tuple(settings.LLMPROXY_ENCRYPTION_KEYS)).decrypt(token.encode()).decode()
    except InvalidToken:
        raise CredentialError(
            "stored provider credential cannot be decrypted: LLMPROXY_ENCRYPTION_KEYS changed?"
        ) from None
