"""The admin: every page loads, a new key's secret is shown exactly once, no secret leaks."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from accounts import services
from accounts.models import ApiKey, ApiToken, Person, SignInToken, Team
from billing.models import BudgetAlert, Price, UsageEvent
from llmproxy.gateway.models import ModelRoute, Provider

pytestmark = pytest.mark.django_db

MODELS = [
    Team, ApiKey, ApiToken, Person, SignInToken, Provider, ModelRoute, Price, UsageEvent,
    BudgetAlert,
]  # fmt: skip


def _url(model, view: str, *args) -> str:
    meta = model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=args)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_changelist_loads(admin_client, model):
    assert admin_client.get(_url(model, "changelist")).status_code == 200


@pytest.mark.parametrize("model", [Team, ApiKey, Person, Provider, ModelRoute, Price])
def test_every_add_form_loads(admin_client, model):
    assert admin_client.get(_url(model, "add")).status_code == 200


def test_creating_a_key_shows_its_secret_once(admin_client, alice):
    response = admin_client.post(
        _url(ApiKey, "add"),
        {
            "name": "alice laptop",
            "owner": alice.pk,
            "allowed_models": "claude-*, gpt-5*",
            "allowed_endpoints": "",
            "allowed_tools": "web_search*",
            "tags": "laptop",
            "metadata": "{}",
            "budget_usd": "25",
            "budget_period": "month",
            "reserve_mode": "worst",
        },
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    secret = re.search(r'value="(llmp-[^"]+)"', page).group(1)
    key = ApiKey.objects.get(name="alice laptop")
    assert services.find_key(secret).pk == key.pk
    assert key.allowed_models == ["claude-*", "gpt-5*"]
    assert key.allowed_tools == ["web_search*"]
    assert key.owner == alice

    # never again: not in the list, the change form, or the search results
    for url in (
        _url(ApiKey, "changelist"),
        _url(ApiKey, "change", key.pk),
        _url(ApiKey, "changelist") + f"?q={key.prefix}",
    ):
        later = admin_client.get(url)
        assert later.status_code == 200
        assert secret not in later.content.decode()
        assert key.prefix in later.content.decode()


def test_editing_a_key_keeps_its_secret(admin_client):
    key, secret = services.create_key(name="edit me")
    data = {
        "name": "edited",
        "allowed_models": "claude-haiku-*",
        "allowed_endpoints": "/v1/messages",
        "allowed_tools": "",
        "tags": "",
        "metadata": '{"cost_center": "42"}',
        "budget_period": "day",
        "reserve_mode": "expected",
        "revoked_reason": "",
    }
    response = admin_client.post(_url(ApiKey, "change", key.pk), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    key.refresh_from_db()
    assert key.name == "edited" and key.allowed_endpoints == ["/v1/messages"]
    assert services.find_key(secret).pk == key.pk


def test_bulk_revoke_action(admin_client):
    first, _ = services.create_key(name="one")
    second, _ = services.create_key(name="two")
    response = admin_client.post(
        _url(ApiKey, "changelist"),
        {"action": "revoke_selected", "_selected_action": [first.pk, second.pk]},
    )
    assert response.status_code == 302
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 2
    assert "root" in ApiKey.objects.get(pk=first.pk).revoked_reason
    listing = admin_client.get(_url(ApiKey, "changelist") + "?state=revoked")
    assert "one" in listing.content.decode() and "two" in listing.content.decode()


def test_provider_credential_is_write_only_and_encrypted(admin_client):
    credential = "sk-ant-admin-secret-0123456789"
    response = admin_client.post(
        _url(Provider, "add"),
        {
            "name": "anthropic",
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com",
            "api_key": credential,
            "extra_headers": "{}",
            "enabled": "on",
            "routes-TOTAL_FORMS": "0",
            "routes-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    provider = Provider.objects.get(name="anthropic")
    assert provider.credential == credential
    assert credential not in provider.credential_encrypted
    for url in (_url(Provider, "changelist"), _url(Provider, "change", provider.pk)):
        page = admin_client.get(url).content.decode()
        assert credential not in page
        assert provider.credential_encrypted not in page

    # saving without a new key keeps the old one
    response = admin_client.post(
        _url(Provider, "change", provider.pk),
        {
            "name": "anthropic",
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com",
            "api_key": "",
            "extra_headers": "{}",
            "routes-TOTAL_FORMS": "0",
            "routes-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.credential == credential and provider.enabled is False


def test_a_new_provider_needs_a_key(admin_client):
    response = admin_client.post(
        _url(Provider, "add"),
        {
            "name": "nokey",
            "kind": "openai",
            "base_url": "https://api.openai.com",
            "api_key": "",
            "extra_headers": "{}",
            "routes-TOTAL_FORMS": "0",
            "routes-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "A new provider needs its API key." in response.content.decode()
    assert not Provider.objects.filter(name="nokey").exists()


def test_usage_is_read_only_and_filterable(admin_client):
    key, _ = services.create_key(name="usage-key")
    from django.utils import timezone

    UsageEvent.objects.create(
        request_id="req-1",
        api_key=key,
        model="claude-haiku-4-5",
        endpoint="/v1/messages",
        created_at=timezone.now(),
    )
    listing = admin_client.get(
        _url(UsageEvent, "changelist") + f"?api_key__id__exact={key.pk}&model=claude-haiku-4-5"
    )
    assert listing.status_code == 200
    assert "claude-haiku-4-5" in listing.content.decode()
    assert admin_client.get(_url(UsageEvent, "add")).status_code == 403


def test_an_api_token_made_in_the_admin_is_shown_once_and_works(admin_client, alice):
    from rest_framework.test import APIClient

    from accounts.models import ApiToken

    response = admin_client.post(
        reverse("admin:accounts_apitoken_add"), {"user": alice.pk, "name": "ci"}
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    secret = re.search(r'value="(llmpt-[^"]+)"', response.content.decode()).group(1)
    token = ApiToken.objects.get()
    assert token.user == alice and secret not in str(ApiToken.objects.values().get())
    listing = admin_client.get(reverse("admin:accounts_apitoken_changelist")).content.decode()
    assert token.prefix in listing and secret not in listing
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/keys/").status_code == 200


def test_revoking_a_sign_in_in_the_admin_ends_its_family(admin_client, alice):
    from accounts import signin

    issued = signin.issue(person=alice, client="claude_code")
    token = SignInToken.objects.get(kind="access", family=issued.family)
    response = admin_client.post(
        _url(SignInToken, "changelist"),
        {"action": "revoke_sign_ins", "_selected_action": [token.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert not SignInToken.objects.filter(family=issued.family, revoked_at__isnull=True).exists()
    assert admin_client.get(_url(SignInToken, "add")).status_code == 403
