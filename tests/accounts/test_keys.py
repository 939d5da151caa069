"""Virtual keys: shown once, stored as prefix + HMAC digest, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import keys, services
from accounts.models import ApiKey

pytestmark = pytest.mark.django_db


def test_a_key_is_stored_as_prefix_and_hmac_digest_never_the_secret(settings):
    key, secret = services.create_key(name="ci")
    assert secret.startswith("llmp-") and len(secret) > 40
    row = ApiKey.objects.filter(pk=key.pk).values().get()
    assert secret not in str(row)
    assert row["prefix"] == secret[: keys.PREFIX_LENGTH]
    expected = hmac.new(
        settings.LLMPROXY_KEY_HMAC_SECRET.encode(), secret.encode(), hashlib.sha256
    ).hexdigest()
    assert row["digest"] == expected


def test_secrets_are_unique_and_found_by_their_digest():
    _, first = services.create_key(name="a")
    key_b, second = services.create_key(name="b")
    assert first != second
    assert services.find_key(second).pk == key_b.pk
    assert services.find_key(second[:-1] + ("A" if second[-1] != "A" else "B")) is None
    assert services.find_key("not-a-key") is None
    assert services.find_key("llmp-" + "x" * 500) is None


def test_lookup_compares_digests_in_constant_time(monkeypatch):
    _, secret = services.create_key(name="ct")
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    assert services.find_key(secret) is not None
    assert calls and calls[0][0] == keys.key_digest(secret)


def test_a_different_hmac_secret_invalidates_every_key(settings):
    _, secret = services.create_key(name="rotate-me")
    settings.LLMPROXY_KEY_HMAC_SECRET = "another-secret"
    assert services.find_key(secret) is None


def test_expired_and_revoked_keys_are_inactive():
    soon = timezone.now() + timedelta(hours=1)
    key, _ = services.create_key(name="exp", expires_at=soon)
    assert key.is_active and not key.is_expired()
    assert key.is_expired(now=soon + timedelta(seconds=1))
    key.expires_at = timezone.now() - timedelta(seconds=1)
    key.save()
    assert not key.is_active
    assert ApiKey.objects.active().filter(pk=key.pk).count() == 0

    live, _ = services.create_key(name="live")
    assert services.revoke_keys(queryset=ApiKey.objects.filter(pk=live.pk), reason="leaked") == 1
    live.refresh_from_db()
    assert live.is_revoked and not live.is_active and live.revoked_reason == "leaked"
    # revoking again changes nothing
    assert services.revoke_keys(queryset=ApiKey.objects.filter(pk=live.pk)) == 0


def test_rotation_replaces_the_secret():
    key, old = services.create_key(name="rot")
    new = services.rotate_key(key=key)
    assert new != old
    assert services.find_key(old) is None
    assert services.find_key(new).pk == key.pk
