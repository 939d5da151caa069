"""Writes to the management API name only writable fields: anything else is a 400 naming it."""

from __future__ import annotations

import inspect
from decimal import Decimal

import pytest
from rest_framework import serializers
from rest_framework.test import APIClient

from accounts import services as key_services
from accounts.models import ApiKey, ApiToken, Team
from billing.models import Price
from llmproxy.console.api import serializers as api_serializers
from llmproxy.gateway.models import ModelRoute, Provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(django_user_model):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", None)
    _, token = key_services.create_api_token(user=staff, name="t")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    key, secret = key_services.create_key(name="alice laptop", owner=staff, rpm=60)
    provider = Provider(name="anthropic", kind="anthropic", base_url="https://api.anthropic.com")
    provider.credential = "sk-ant-secret"
    provider.save()
    objects = {
        "key": key,
        "team": Team.objects.create(name="platform"),
        "user": staff,
        "provider": provider,
        "route": ModelRoute.objects.create(pattern="claude-*", provider=provider),
        "price": Price.objects.create(
            model_pattern="claude-x", input_per_mtok=Decimal(1), output_per_mtok=Decimal(5)
        ),
    }
    return {"client": client, "secret": secret, **objects}


# (method, path, a body the endpoint accepts); each test adds a field it must refuse.
def writes(world) -> list[tuple[str, str, dict]]:
    key, team, user = world["key"], world["team"], world["user"]
    provider, route, price = world["provider"], world["route"], world["price"]
    return [
        ("post", "/api/keys/", {"name": "ci"}),
        ("patch", f"/api/keys/{key.pk}/", {"rpm": 30}),
        ("put", f"/api/keys/{key.pk}/", {"name": "alice laptop"}),
        ("post", f"/api/keys/{key.pk}/revoke/", {"reason": "lost laptop"}),
        ("post", f"/api/keys/{key.pk}/rotate/", {}),
        ("post", "/api/teams/", {"name": "research"}),
        ("patch", f"/api/teams/{team.pk}/", {"budget_usd": "10"}),
        ("put", f"/api/teams/{team.pk}/", {"name": "platform", "members": []}),
        ("post", "/api/users/", {"username": "bob"}),
        ("patch", f"/api/users/{user.pk}/", {"first_name": "Root"}),
        ("post", "/api/providers/", {"name": "openai", "kind": "openai",
                                     "base_url": "https://api.openai.com", "credential": "sk"}),
        ("patch", f"/api/providers/{provider.pk}/", {"enabled": True}),
        ("post", "/api/routes/", {"pattern": "gpt-*", "provider": provider.pk}),
        ("patch", f"/api/routes/{route.pk}/", {"priority": 5}),
        ("post", "/api/prices/", {"model_pattern": "gpt-x", "input_per_mtok": "1",
                                  "output_per_mtok": "2"}),
        ("patch", f"/api/prices/{price.pk}/", {"source": "https://example.com"}),
        ("post", "/api/tokens/", {"name": "laptop"}),
    ]  # fmt: skip


def snapshot() -> list:
    """Everything the writes could change, to prove a refused write changed nothing."""
    models = [ApiKey, Team, Provider, ModelRoute, Price]
    rows = [list(model.objects.order_by("pk").values()) for model in models]
    tokens = ApiToken.objects.order_by("pk").values("pk", "name", "digest")  # not last_used_at
    return [*rows, list(tokens), list(Team.members.through.objects.values())]


def test_an_unknown_field_is_a_400_naming_it_and_nothing_changes(world):
    client = world["client"]
    for method, path, body in writes(world):
        before = snapshot()
        response = getattr(client, method)(path, {**body, "requests_per_minute": 60})
        assert response.status_code == 400, (method, path, response.content)
        errors = response.json()
        assert list(errors) == ["requests_per_minute"], (method, path, errors)
        assert errors["requests_per_minute"][0].startswith("Unknown field."), errors
        assert snapshot() == before, (method, path)


def test_the_message_lists_what_the_endpoint_accepts(world):
    response = world["client"].post("/api/keys/", {"name": "ci", "requests_per_minute": 60})
    message = response.json()["requests_per_minute"][0]
    assert "rpm" in message and "budget_usd" in message
    assert "prefix" not in message and "state" not in message  # read-only: not accepted
    rotate = world["client"].post(f"/api/keys/{world['key'].pk}/rotate/", {"force": True})
    assert rotate.json() == {"force": ["Unknown field. This endpoint accepts: no fields."]}


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", 99), ("prefix", "llmp-abc"), ("state", "active"), ("created_at", "2020-01-01"),
     ("revoked_at", None), ("last_used_at", None), ("key", "llmp-mine")],
)  # fmt: skip
def test_a_read_only_key_field_is_reported_as_not_writable(world, field, value):
    key = world["key"]
    response = world["client"].patch(f"/api/keys/{key.pk}/", {"rpm": 30, field: value})
    assert response.status_code == 400, response.content
    detail = response.json()[field][0]
    if field == "key":  # the secret is only ever an output of create and rotate
        assert detail.startswith("Unknown field.")
    else:
        assert detail == "This field is read-only; it cannot be written."
    key.refresh_from_db()
    assert key.rpm == 60


def test_read_only_fields_of_other_endpoints(world):
    client = world["client"]
    provider = client.patch(
        f"/api/providers/{world['provider'].pk}/", {"has_credential": False, "updated_at": None}
    )
    assert provider.status_code == 400
    assert set(provider.json()) == {"has_credential", "updated_at"}
    token = client.post("/api/tokens/", {"name": "x", "prefix": "llmpt-mine"})
    assert token.status_code == 400 and "read-only" in token.json()["prefix"][0]
    team = client.patch(f"/api/teams/{world['team'].pk}/", {"created_at": "2020-01-01"})
    assert team.status_code == 400 and "created_at" in team.json()


def test_refused_fields_come_with_the_other_field_errors(world):
    response = world["client"].post(
        "/api/keys/", {"name": "ci", "rpm": "fast", "requests_per_minute": 60, "prefix": "x"}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"rpm", "requests_per_minute", "prefix"}


def test_valid_writes_still_work(world):
    client = world["client"]
    assert client.patch(f"/api/keys/{world['key'].pk}/", {"rpm": 30}).status_code == 200
    revoke = client.post(f"/api/keys/{world['key'].pk}/revoke/", {"reason": "lost laptop"})
    assert revoke.status_code == 200 and revoke.json()["revoked_reason"] == "lost laptop"
    assert client.post(f"/api/keys/{world['key'].pk}/rotate/").status_code == 200


def test_every_serializer_of_the_api_is_strict():
    """A serializer added later cannot silently ignore input: all of them take the mixin."""
    found = [
        value
        for value in vars(api_serializers).values()
        if inspect.isclass(value)
        and issubclass(value, serializers.BaseSerializer)
        and value.__module__ == api_serializers.__name__
    ]
    assert len(found) >= 15
    loose = [cls.__name__ for cls in found if not issubclass(cls, api_serializers.StrictInput)]
    assert loose == []


def test_the_schema_says_request_bodies_take_no_other_properties(world):
    schema = APIClient().get("/api/schema/?format=json").json()["components"]["schemas"]
    requests = {name: body for name, body in schema.items() if name.endswith("Request")}
    assert {"ApiKeyRequest", "PatchedApiKeyRequest", "RevokeRequest", "TokenRequest"} <= set(
        requests
    )
    assert all(body["additionalProperties"] is False for body in requests.values())
    assert "additionalProperties" not in schema["ApiKey"]  # responses may grow fields
