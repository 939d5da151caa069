"""The audit log: every change through the admin, the API or a management command, who made
it and what changed, with secrets redacted; read-only everywhere."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from accounts import services as key_services
from accounts.audit import REDACTED
from accounts.models import ApiKey, AuditEntry, Team
from billing.models import Price
from llmproxy.gateway import services as provider_services
from llmproxy.gateway.models import ModelRoute, Provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def api(root):
    _, token = key_services.create_api_token(user=root, name="t")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def admin(root):
    client = Client()
    client.force_login(root)
    return client


def entries(**filters) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(**filters).order_by("at", "id"))


def only(**filters) -> AuditEntry:
    found = entries(**filters)
    assert len(found) == 1, [(e.action, e.object_repr, e.changes) for e in found]
    return found[0]


def test_nothing_is_recorded_outside_the_admin_api_and_commands(root):
    key_services.create_key(name="made by the code", owner=root)
    Team.objects.create(name="quiet")
    assert AuditEntry.objects.count() == 0


def test_an_api_change_records_who_what_and_the_old_and_new_values(api, root):
    key, _ = key_services.create_key(name="laptop", budget_usd=Decimal(10), rpm=60)
    response = api.patch(f"/api/keys/{key.pk}/", {"budget_usd": "25", "rpm": 60}, format="json")
    assert response.status_code == 200
    entry = only(object_id=str(key.pk), content_type__model="apikey")
    assert (entry.actor, entry.actor_name, entry.via, entry.action) == (
        root,
        "root",
        "api",
        "update",
    )
    assert entry.object_repr == str(key)
    assert entry.changes == {"budget_usd": {"old": "10.0000", "new": "25.0000"}}


def test_api_creates_rotations_and_deletes_are_recorded_with_secrets_redacted(api):
    created = api.post("/api/keys/", {"name": "ci", "rpm": 5}, format="json").json()
    secret = created["key"]
    entry = only(action="create", content_type__model="apikey")
    assert entry.changes["name"] == {"old": None, "new": "ci"}
    assert entry.changes["digest"] == {"old": None, "new": REDACTED}
    rotated = api.post(f"/api/keys/{created['id']}/rotate/").json()["key"]
    rotation = only(action="update", content_type__model="apikey")
    assert rotation.changes["digest"] == {"old": REDACTED, "new": REDACTED}
    assert set(rotation.changes) == {"digest", "prefix"}
    token = api.post("/api/tokens/", {"name": "scripts"}, format="json").json()
    assert api.delete(f"/api/tokens/{token['id']}/").status_code == 204
    assert [e.action for e in entries(content_type__model="apitoken")] == ["create", "delete"]
    log = json.dumps([e.changes for e in AuditEntry.objects.all()])
    key = ApiKey.objects.get(pk=created["id"])
    for value in (secret, rotated, token["token"], key.digest):
        assert value not in log


def test_provider_credentials_never_reach_the_log(api):
    body = {"name": "anthropic", "kind": "anthropic", "base_url": "https://api.anthropic.com",
            "credential": "sk-ant-very-secret"}  # fmt: skip
    provider_id = api.post("/api/providers/", body, format="json").json()["id"]
    api.patch(f"/api/providers/{provider_id}/",
              {"base_url": "https://eu.anthropic.example", "credential": "sk-ant-other"},
              format="json")  # fmt: skip
    change = only(action="update", content_type__model="provider")
    assert change.changes == {
        "base_url": {"old": "https://api.anthropic.com", "new": "https://eu.anthropic.example"},
        "credential_encrypted": {"old": REDACTED, "new": REDACTED},
        "updated_at": change.changes["updated_at"],
    }
    encrypted = Provider.objects.get(pk=provider_id).credential_encrypted
    log = json.dumps([e.changes for e in AuditEntry.objects.all()])
    assert "sk-ant" not in log and encrypted not in log


def test_memberships_are_recorded_from_either_side(api, django_user_model):
    alice = django_user_model.objects.create_user("alice")
    team = Team.objects.create(name="platform")
    assert api.patch(f"/api/teams/{team.pk}/", {"members": [alice.pk]},
                     format="json").status_code == 200  # fmt: skip
    entry = only(content_type__model="team")
    assert entry.changes == {"members": {"old": [], "new": [alice.pk]}}


def test_an_admin_change_is_recorded_as_the_admin_user(admin, root):
    team = Team.objects.create(name="platform", budget_usd=Decimal(100))
    response = admin.post(
        f"/admin/accounts/team/{team.pk}/change/",
        {"name": "platform", "budget_usd": "150", "budget_period": "month",
         "alert_webhook_url": ""},
    )  # fmt: skip
    assert response.status_code == 302, response.content[:3000]
    entry = only(content_type__model="team", action="update")
    assert (entry.actor, entry.via) == (root, "admin")
    assert entry.changes == {"budget_usd": {"old": "100.0000", "new": "150.0000"}}


def test_admin_password_changes_are_recorded_but_never_the_hash(admin, django_user_model):
    alice = django_user_model.objects.create_user("alice", password="pw-old-123456")
    response = admin.post(
        f"/admin/auth/user/{alice.pk}/password/",
        {"password1": "a-new-Passw0rd!", "password2": "a-new-Passw0rd!", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content[:2000]
    entry = only(content_type__model="user", object_id=str(alice.pk))
    assert entry.changes == {"password": {"old": REDACTED, "new": REDACTED}}
    alice.refresh_from_db()
    assert alice.password not in json.dumps(entry.changes)


def test_management_commands_are_recorded_as_the_command(root):
    call_command("createkey", "from the shell", "--budget", "3")
    entry = only(content_type__model="apikey")
    assert (entry.actor, entry.actor_name, entry.via, entry.action) == (
        None,
        "manage.py createkey",
        "command",
        "create",
    )
    call_command(
        "addprovider", "openai", "--kind", "openai", "--base-url", "https://api.openai.com",
        "--api-key", "sk-from-shell", "--models", "gpt-*",
    )  # fmt: skip
    provider = only(content_type__model="provider")
    assert provider.changes["credential_encrypted"] == {"old": None, "new": REDACTED}
    assert only(content_type__model="modelroute").actor_name == "manage.py addprovider"
    call_command("createtoken", "root", "--name", "ci")
    assert only(content_type__model="apitoken").actor_name == "manage.py createtoken"


def test_prices_and_routes_are_audited(api):
    provider, _ = provider_services.upsert_provider(
        name="p", kind="anthropic", base_url="https://api.anthropic.com", credential="sk"
    )
    price = Price.objects.create(model_pattern="m-*", input_per_mtok=1, output_per_mtok=2)
    route = ModelRoute.objects.create(pattern="m-*", provider=provider)
    api.patch(f"/api/prices/{price.pk}/", {"input_per_mtok": "3"}, format="json")
    api.patch(f"/api/routes/{route.pk}/", {"priority": 5}, format="json")
    changed = {e.content_type.model: e.changes for e in entries(action="update")}
    assert changed["price"]["input_per_mtok"]["new"] == "3.000000"
    assert changed["modelroute"] == {"priority": {"old": 100, "new": 5}}


def test_a_change_rolled_back_leaves_no_entry(api):
    key, _ = key_services.create_key(name="laptop")
    response = api.patch(f"/api/keys/{key.pk}/", {"rpm": -1}, format="json")
    assert response.status_code == 400
    assert AuditEntry.objects.count() == 0


# --- reading it ---------------------------------------------------------------------------


@pytest.fixture
def log(api, django_user_model):
    key, _ = key_services.create_key(name="laptop")
    api.patch(f"/api/keys/{key.pk}/", {"rpm": 5}, format="json")
    team = Team.objects.create(name="platform")
    api.patch(f"/api/teams/{team.pk}/", {"budget_usd": "9"}, format="json")
    call_command("createkey", "shell key")
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_auditentry"))
    clerk = django_user_model.objects.create_user("clerk", is_staff=True)
    clients = {"root": api}
    for user in (viewer, clerk):
        _, token = key_services.create_api_token(user=user, name="t")
        clients[user.username] = APIClient()
        clients[user.username].credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return {"key": key, "team": team, "clients": clients}


@pytest.mark.parametrize(("who", "status"), [("root", 200), ("viewer", 200), ("clerk", 403)])
def test_the_api_lists_the_log_to_those_with_the_view_permission(log, who, status):
    response = log["clients"][who].get("/api/audit/")
    assert response.status_code == status
    if status == 200:
        rows = response.json()["results"]
        assert [(r["via"], r["object_type"]) for r in rows[:3]] == [
            ("command", "accounts.apikey"),
            ("api", "accounts.team"),
            ("api", "accounts.apikey"),
        ]


def test_the_api_filters_the_log(log):
    client = log["clients"]["viewer"]

    def count(**query) -> int:
        response = client.get("/api/audit/", query)
        assert response.status_code == 200, response.content
        return response.json()["count"]

    assert count(object_type="accounts.team") == 1
    assert count(object_type="accounts.apikey", object_id=str(log["key"].pk)) == 1
    assert count(via="command") == 1
    assert count(action="create") == 1
    assert count(since="2000-01-01", until="2000-01-02") == 0
    assert client.get("/api/audit/", {"via": "phone"}).status_code == 400
    assert client.get("/api/audit/", {"object_type": "apikey"}).status_code == 400
    assert client.get("/api/audit/", {"actor": "x"}).status_code == 400


@pytest.mark.parametrize("who", ["root", "viewer"])
def test_the_api_cannot_change_the_log(log, who):
    client, entry = log["clients"][who], AuditEntry.objects.first()
    assert client.post("/api/audit/", {"action": "create"}, format="json").status_code in (403, 405)
    changed = client.patch(f"/api/audit/{entry.pk}/", {"actor_name": "x"}, format="json")
    assert changed.status_code in (403, 405)
    assert client.delete(f"/api/audit/{entry.pk}/").status_code in (403, 405)
    assert AuditEntry.objects.filter(pk=entry.pk, actor_name=entry.actor_name).exists()


def test_the_admin_browses_and_filters_the_log_but_cannot_change_it(log, admin):
    entry = AuditEntry.objects.filter(via="api").first()
    listed = admin.get("/admin/accounts/auditentry/?via__exact=command")
    assert listed.status_code == 200 and b"manage.py createkey" in listed.content
    assert b"root" not in listed.content.split(b"result_list")[-1].split(b"</table>")[0]
    added = admin.get("/admin/accounts/auditentry/add/")
    assert added.status_code == 403, added.content[:1500]
    page = admin.get(f"/admin/accounts/auditentry/{entry.pk}/change/")
    assert page.status_code == 200 and b'type="submit"' not in page.content.split(b"<form")[-1]
    assert admin.post(f"/admin/accounts/auditentry/{entry.pk}/change/", {}).status_code == 403
    assert admin.post(f"/admin/accounts/auditentry/{entry.pk}/delete/", {"post": "yes"}
                      ).status_code == 403  # fmt: skip
    bulk = admin.post("/admin/accounts/auditentry/",
                      {"action": "delete_selected", "_selected_action": [entry.pk]})  # fmt: skip
    assert AuditEntry.objects.filter(pk=entry.pk).exists(), bulk.status_code


@pytest.mark.django_db(transaction=True)
def test_a_change_through_the_asgi_server_is_audited(gateway, root):
    """Under ASGI (uvicorn, sync views in a thread) the request's user still reaches the log."""
    import httpx

    _, token = key_services.create_api_token(user=root, name="asgi")
    team = Team.objects.create(name="platform")
    response = httpx.patch(
        f"{gateway.url}/api/teams/{team.pk}/",
        json={"rpm": 42},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    entry = only(content_type__model="team")
    assert (entry.actor, entry.via, entry.changes) == (
        root,
        "api",
        {"rpm": {"old": None, "new": 42}},
    )
