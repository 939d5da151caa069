"""No silent key trap: keys and API tokens are made only with the recorded digest secret."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from accounts import keys, services
from accounts.models import ApiKey, ApiToken, KeySecretFingerprint

pytestmark = pytest.mark.django_db


def test_the_first_key_records_a_fingerprint_of_the_secret_never_the_secret(settings):
    assert not KeySecretFingerprint.objects.exists()
    services.create_key(name="first")
    row = KeySecretFingerprint.objects.values().get()
    assert row["id"] == 1 and len(row["fingerprint"]) == 64
    assert settings.LLMPROXY_KEY_HMAC_SECRET not in str(row)
    assert row["fingerprint"] == keys.secret_fingerprint()
    assert row["fingerprint"] != keys.key_digest(settings.LLMPROXY_KEY_HMAC_SECRET)
    services.create_key(name="second")
    assert KeySecretFingerprint.objects.count() == 1


def test_an_api_token_records_it_too(alice):
    services.create_api_token(user=alice, name="ci")
    assert KeySecretFingerprint.objects.get().fingerprint == keys.secret_fingerprint()


def test_another_secret_may_not_make_or_rotate_keys_or_tokens(settings, alice):
    key, secret = services.create_key(name="made with the gateway's secret")
    gateways = settings.LLMPROXY_KEY_HMAC_SECRET
    settings.LLMPROXY_KEY_HMAC_SECRET = "a-secret-the-gateway-does-not-have"
    assert not services.key_secret_matches()
    with pytest.raises(services.KeySecretMismatch) as raised:
        services.create_key(name="trap")
    message = str(raised.value)
    assert "LLMPROXY_KEY_HMAC_SECRET" in message and "DJANGO_SECRET_KEY" in message
    assert "manage.py resetkeysecret --yes" in message and "\n" not in message
    with pytest.raises(services.KeySecretMismatch):
        services.rotate_key(key=key)
    with pytest.raises(services.KeySecretMismatch):
        services.assign_new_secret(ApiKey(name="unsaved"))
    with pytest.raises(services.KeySecretMismatch):
        services.create_api_token(user=alice, name="trap")
    assert list(ApiKey.objects.values_list("name", flat=True)) == [key.name]
    assert not ApiToken.objects.exists()
    settings.LLMPROXY_KEY_HMAC_SECRET = gateways
    assert services.find_key(secret) == key  # the refused rotation changed nothing


def test_resetting_records_the_new_secret_and_old_keys_stay_dead(settings):
    _, old_secret = services.create_key(name="old")
    assert services.reset_key_secret() == "same"
    settings.LLMPROXY_KEY_HMAC_SECRET = "changed-on-purpose"
    assert services.reset_key_secret() == "other"
    assert KeySecretFingerprint.objects.get().fingerprint == keys.secret_fingerprint()
    _, new_secret = services.create_key(name="new")
    assert services.find_key(new_secret).name == "new"
    assert services.find_key(old_secret) is None


def test_reset_with_nothing_recorded_records_the_secret():
    assert services.reset_key_secret() == "none"
    assert KeySecretFingerprint.objects.get().fingerprint == keys.secret_fingerprint()


def test_the_admin_refuses_new_keys_and_tokens_under_another_secret(admin_client, settings, alice):
    services.create_key(name="existing")
    settings.LLMPROXY_KEY_HMAC_SECRET = "a-secret-the-gateway-does-not-have"
    response = admin_client.post(
        reverse("admin:accounts_apikey_add"),
        {"name": "trap", "metadata": "{}", "budget_period": "month", "reserve_mode": "worst"},
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "resetkeysecret" in page and not re.search(r'value="llmp-', page)
    assert not ApiKey.objects.filter(name="trap").exists()
    response = admin_client.post(
        reverse("admin:accounts_apitoken_add"), {"user": alice.pk, "name": "trap"}
    )
    assert response.status_code == 200 and "resetkeysecret" in response.content.decode()
    assert not ApiToken.objects.exists()
