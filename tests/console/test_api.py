"""The management API, tried by a fixed cast: staff, a key's owner, a teammate, an outsider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts import services as key_services
from accounts.models import ApiKey, ApiToken, Team
from tests.usage import record_usage

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(django_user_model):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", None)
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    charlie = django_user_model.objects.create_user("charlie")
    team = Team.objects.create(name="platform", budget_usd=Decimal(100))
    team.members.add(alice, bob)
    key_a, secret_a = key_services.create_key(
        name="alice laptop", owner=alice, team=team, budget_usd=Decimal(10), rpm=60,
        allowed_models=["claude-*"],
    )  # fmt: skip
    key_b, _ = key_services.create_key(name="bob laptop", owner=bob, team=team)
    now = datetime.now(UTC)
    for index, (key, model, cost) in enumerate(
        [(key_a, "claude-a", "1.5"), (key_a, "claude-b", "0.5"), (key_b, "claude-a", "2")]
    ):
        record_usage(
            request_id=f"r{index}", api_key=key, team=team, model=model, client="claude-code",
            endpoint="/v1/messages", cost_usd=Decimal(cost), input_tokens=100, output_tokens=10,
            created_at=now - timedelta(hours=index),
        )  # fmt: skip
    clients = {}
    for user in (staff, alice, bob, charlie):
        _, token = key_services.create_api_token(user=user, name="t")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        clients[user.username] = client
    return {"clients": clients, "key_a": key_a, "secret_a": secret_a, "key_b": key_b, "team": team}


def names(response) -> list:
    assert response.status_code == 200, response.content
    body = response.json()
    rows = body["results"] if isinstance(body, dict) and "results" in body else body
    return sorted(str(row.get("name") or row.get("request_id") or row.get("group")) for row in rows)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("root", ["alice laptop", "bob laptop"]),
        ("alice", ["alice laptop"]),
        ("bob", ["bob laptop"]),
        ("charlie", []),
    ],
)
def test_keys_list(cast, who, expected):
    assert names(cast["clients"][who].get("/api/keys/")) == expected


@pytest.mark.parametrize(
    ("who", "status"), [("root", 200), ("alice", 200), ("bob", 404), ("charlie", 404)]
)
def test_key_detail_rotate_and_revoke(cast, who, status):
    client, key = cast["clients"][who], cast["key_a"]
    assert client.get(f"/api/keys/{key.pk}/").status_code == status
    rotated = client.post(f"/api/keys/{key.pk}/rotate/")
    assert rotated.status_code == status
    if status == 200:
        assert key_services.find_key(rotated.json()["key"]).pk == key.pk
        assert key_services.find_key(cast["secret_a"]) is None
        revoked = client.post(f"/api/keys/{key.pk}/revoke/", {"reason": "lost laptop"})
        assert revoked.json()["state"] == "revoked"
    else:
        assert key_services.find_key(cast["secret_a"]).pk == key.pk


@pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
def test_only_staff_create_keys(cast, who):
    response = cast["clients"][who].post("/api/keys/", {"name": "self-issued"}, format="json")
    assert response.status_code == 403
    assert not ApiKey.objects.filter(name="self-issued").exists()


def test_staff_create_a_key_and_see_its_secret_once(cast):
    client = cast["clients"]["root"]
    response = client.post(
        "/api/keys/",
        {"name": "ci", "allowed_models": ["gpt-5*"], "budget_usd": "5", "rpm": 10},
        format="json",
    )
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    secret = response.json()["key"]
    key = key_services.find_key(secret)
    assert key.allowed_models == ["gpt-5*"] and key.rpm == 10
    listed = client.get(f"/api/keys/{key.pk}/")
    assert "key" not in listed.json() and secret not in listed.content.decode()


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        ({"name": "renamed"}, True),
        ({"budget_usd": "5"}, True),
        ({"budget_usd": "50"}, False),
        ({"budget_usd": None}, False),
        ({"rpm": 30}, True),
        ({"rpm": 600}, False),
        ({"allowed_models": ["claude-haiku-*"]}, False),  # not a subset of claude-*
        ({"allowed_models": ["claude-*"]}, True),
        ({"allowed_models": []}, False),  # empty means every model
        ({"allowed_tools": ["web_search*"]}, False),
        ({"allow_background": True}, False),
        ({"reserve_mode": "expected"}, False),
        ({"team": None}, False),
    ],
)
def test_an_owner_may_tighten_but_never_loosen(cast, change, allowed):
    key = cast["key_a"]
    response = cast["clients"]["alice"].patch(f"/api/keys/{key.pk}/", change, format="json")
    assert response.status_code == (200 if allowed else 403), response.content
    staff = cast["clients"]["root"].patch(f"/api/keys/{key.pk}/", change, format="json")
    assert staff.status_code == 200


@pytest.mark.parametrize(
    ("who", "expected"),
    [("root", ["platform"]), ("alice", ["platform"]), ("bob", ["platform"]), ("charlie", [])],
)
def test_teams_are_visible_to_members_and_changed_by_staff(cast, who, expected):
    client = cast["clients"][who]
    assert names(client.get("/api/teams/")) == expected
    change = client.patch(f"/api/teams/{cast['team'].pk}/", {"budget_usd": "1000"}, format="json")
    assert change.status_code == (200 if who == "root" else 403)


@pytest.mark.parametrize("path", ["/api/users/", "/api/providers/", "/api/routes/", "/api/prices/"])
@pytest.mark.parametrize(("who", "status"), [("root", 200), ("alice", 403), ("bob", 403),
                                             ("charlie", 403)])  # fmt: skip
def test_staff_only_endpoints(cast, path, who, status):
    assert cast["clients"][who].get(path).status_code == status


@pytest.mark.parametrize("path", ["/api/keys/", "/api/usage/", "/api/spend", "/api/teams/"])
def test_anonymous_callers_get_nothing(cast, path):
    assert APIClient().get(path).status_code in (401, 403)


@pytest.mark.parametrize(
    ("who", "expected"),
    [("root", ["r0", "r1", "r2"]), ("alice", ["r0", "r1"]), ("bob", ["r2"]), ("charlie", [])],
)
def test_usage_is_scoped_to_the_callers_keys(cast, who, expected):
    assert names(cast["clients"][who].get("/api/usage/")) == expected


def test_usage_filters_pages_and_csv(cast):
    client = cast["clients"]["root"]
    key_a = cast["key_a"]
    assert names(client.get(f"/api/usage/?key={key_a.pk}&model=claude-a")) == ["r0"]
    since = (datetime.now(UTC) - timedelta(minutes=90)).isoformat()
    assert names(client.get("/api/usage/", {"since": since})) == ["r0", "r1"]
    page = client.get("/api/usage/?page_size=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert client.get("/api/usage/?since=yesterday").status_code == 400
    assert client.get("/api/usage/?key=abc").status_code == 400
    export = client.get("/api/usage/?export=csv&client=claude-code")
    lines = b"".join(export.streaming_content).decode().strip().splitlines()
    assert lines[0].startswith("id,request_id,created_at") and len(lines) == 4


@pytest.mark.parametrize(
    ("who", "expected"),
    [("root", ["claude-a", "claude-b"]), ("alice", ["claude-a", "claude-b"]),
     ("bob", ["claude-a"]), ("charlie", [])],
)  # fmt: skip
def test_spend_is_scoped_like_usage(cast, who, expected):
    assert names(cast["clients"][who].get("/api/spend?by=model")) == expected


def test_spend_aggregates(cast):
    client = cast["clients"]["root"]
    by_model = client.get("/api/spend?by=model").json()
    assert [(r["group"], r["cost_usd"], r["requests"]) for r in by_model] == [
        ("claude-a", "3.50000000", 2),
        ("claude-b", "0.50000000", 1),
    ]
    by_key = {r["group"]: r["cost_usd"] for r in client.get("/api/spend?by=key").json()}
    assert by_key == {str(cast["key_a"].pk): "2.00000000", str(cast["key_b"].pk): "2.00000000"}
    assert len(client.get("/api/spend?by=day").json()) >= 1
    assert names(cast["clients"]["charlie"].get("/api/spend?by=model")) == []
    assert client.get("/api/spend?by=planet").status_code == 400


def test_spend_by_key_or_team_names_each_group(cast):
    client = cast["clients"]["root"]
    key_a, key_b = cast["key_a"], cast["key_b"]
    by_key = {r["group"]: (r["name"], r["prefix"]) for r in client.get("/api/spend?by=key").json()}
    assert by_key == {
        str(key_a.pk): ("alice laptop", key_a.prefix),
        str(key_b.pk): ("bob laptop", key_b.prefix),
    }
    by_team = client.get("/api/spend?by=team").json()
    assert [(r["group"], r["name"], r["prefix"]) for r in by_team] == [
        (str(cast["team"].pk), "platform", None)
    ]
    assert {r["name"] for r in client.get("/api/spend?by=model").json()} == {None}


def test_provider_credentials_are_write_only(cast):
    client = cast["clients"]["root"]
    created = client.post(
        "/api/providers/",
        {"name": "anthropic", "kind": "anthropic", "base_url": "https://api.anthropic.com",
         "credential": "sk-ant-very-secret"},
        format="json",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    assert "sk-ant-very-secret" not in created.content.decode()
    listed = client.get("/api/providers/")
    assert "sk-ant-very-secret" not in listed.content.decode()
    assert listed.json()["results"][0]["has_credential"] is True
    missing = client.post(
        "/api/providers/", {"name": "x", "kind": "openai", "base_url": "https://x"}, format="json"
    )
    assert missing.status_code == 400


def test_me_for_a_key_holder(cast):
    response = APIClient().get("/api/me", HTTP_X_API_KEY=cast["secret_a"])
    assert response.status_code == 200
    body = response.json()
    assert body["key"]["name"] == "alice laptop"
    budgets = {b["scope"]: b for b in body["budgets"]}
    assert budgets["key"]["spent_usd"] == "2.00000000"
    assert budgets["key"]["remaining_usd"] == "8.00000000"
    assert budgets["team"]["spent_usd"] == "4.00000000"
    bearer = APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {cast['secret_a']}")
    assert bearer.status_code == 200
    assert APIClient().get("/api/me", HTTP_X_API_KEY="llmp-nope").status_code == 401
    assert cast["clients"]["root"].get("/api/me").status_code in (401, 403)


def test_api_tokens_are_shown_once_and_work(cast):
    client = cast["clients"]["charlie"]
    created = client.post("/api/tokens/", {"name": "laptop"}, format="json")
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret not in client.get("/api/tokens/").content.decode()
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert fresh.get("/api/keys/").status_code == 200
    assert client.delete(f"/api/tokens/{created.json()['id']}/").status_code == 204
    assert fresh.get("/api/keys/").status_code == 401
    # someone else's token is not yours to delete
    other = cast["clients"]["alice"].get("/api/tokens/").json()[0]["id"]
    assert client.delete(f"/api/tokens/{other}/").status_code == 404


def test_the_schema_and_docs_are_served(cast):
    schema = APIClient().get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/keys/", "/api/usage/", "/api/spend", "/api/me"} <= set(paths)
    docs = APIClient().get("/api/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
    assert b"cdn." not in docs.content  # vendored: works with no internet


def test_keys_and_tokens_are_not_made_with_another_digest_secret(cast, settings):
    """A secret the existing keys were not made with would mint keys no gateway accepts."""
    staff = APIClient()
    staff.force_login(get_user_model().objects.get(username="root"))
    settings.LLMPROXY_KEY_HMAC_SECRET = "a-secret-the-gateway-does-not-have"
    for response in (
        staff.post("/api/keys/", {"name": "trap"}, format="json"),
        staff.post(f"/api/keys/{cast['key_b'].pk}/rotate/"),
        staff.post("/api/tokens/", {"name": "trap"}, format="json"),
    ):
        assert response.status_code == 409, response.content
        assert "resetkeysecret" in response.json()["detail"]
    assert not ApiKey.objects.filter(name="trap").exists()
    assert not ApiToken.objects.filter(name="trap").exists()
