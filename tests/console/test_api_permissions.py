"""Admin powers match Django's permissions, on the API and in the admin.

The cast: a superuser (root), staff with every model permission (manager), staff with only
the view permissions (viewer), staff with none (clerk), a key's owner (alice) and an
outsider (charlie).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, ApiToken
from llmproxy.gateway import services as provider_services
from llmproxy.gateway.models import Provider
from llmproxy.gateway.targets import check_base_url

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(perm_cast):
    return perm_cast


CAST = ["root", "manager", "viewer", "clerk", "alice", "charlie"]


def status_of(cast, who, method, path, body=None) -> int:
    return getattr(cast["clients"][who], method)(path, body, format="json").status_code


# --- model permissions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "seen"),
    [("root", 1), ("manager", 1), ("viewer", 1), ("clerk", 0), ("alice", 1), ("charlie", 0)],
)
def test_keys_are_listed_by_the_view_permission_or_ownership(cast, who, seen):
    response = cast["clients"][who].get("/api/keys/")
    assert response.status_code == 200 and response.json()["count"] == seen


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 201), ("manager", 201), ("viewer", 403), ("clerk", 403), ("alice", 403),
     ("charlie", 403)],
)  # fmt: skip
def test_creating_a_key_needs_the_add_permission(cast, who, status):
    assert status_of(cast, who, "post", "/api/keys/", {"name": f"by {who}"}) == status
    assert ApiKey.objects.filter(name=f"by {who}").exists() == (status == 201)


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 200), ("manager", 200), ("viewer", 403), ("clerk", 404), ("alice", 403),
     ("charlie", 404)],
)  # fmt: skip
def test_raising_a_key_budget_needs_the_change_permission(cast, who, status):
    key = cast["key"]
    assert status_of(cast, who, "patch", f"/api/keys/{key.pk}/", {"budget_usd": "99"}) == status
    key.refresh_from_db()
    assert key.budget_usd == (Decimal(99) if status == 200 else Decimal(10))


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 200), ("manager", 200), ("viewer", 403), ("clerk", 404), ("alice", 200),
     ("charlie", 404)],
)  # fmt: skip
def test_rotating_a_key_needs_the_change_permission_or_ownership(cast, who, status):
    assert status_of(cast, who, "post", f"/api/keys/{cast['key'].pk}/rotate/") == status


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 200), ("manager", 200), ("viewer", 403), ("clerk", 403), ("alice", 403),
     ("charlie", 403)],
)  # fmt: skip
def test_changing_a_team_needs_the_change_permission(cast, who, status):
    team = cast["team"]
    assert status_of(cast, who, "patch", f"/api/teams/{team.pk}/", {"budget_usd": "5"}) == status


@pytest.mark.parametrize("path", ["/api/users/", "/api/routes/", "/api/prices/"])
@pytest.mark.parametrize(
    ("who", "read", "write"),
    [("root", 200, 201), ("manager", 200, 201), ("viewer", 200, 403), ("clerk", 403, 403),
     ("alice", 403, 403), ("charlie", 403, 403)],
)  # fmt: skip
def test_model_permissions_gate_reads_and_writes(cast, path, who, read, write):
    assert status_of(cast, who, "get", path) == read
    body = {
        "/api/users/": {"username": f"new-{who}"},
        "/api/routes/": {"pattern": f"m-{who}-*", "provider": cast["provider"].pk},
        "/api/prices/": {"model_pattern": f"m-{who}", "input_per_mtok": "1",
                         "output_per_mtok": "2"},
    }[path]  # fmt: skip
    assert status_of(cast, who, "post", path, body) == write


@pytest.mark.parametrize(
    ("who", "seen"),
    [("root", 1), ("manager", 1), ("viewer", 1), ("clerk", 0), ("alice", 0), ("charlie", 0)],
)
def test_usage_of_others_needs_the_view_permission(cast, who, seen):
    from django.utils import timezone

    from billing.models import UsageEvent

    UsageEvent.objects.create(
        request_id="r1", api_key=cast["key"], model="claude-x", created_at=timezone.now()
    )
    expected = 1 if who == "alice" else seen  # alice owns the key
    assert cast["clients"][who].get("/api/usage/").json()["count"] == expected


# --- superuser only: providers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "read", "write"),
    [("root", 200, 200), ("manager", 200, 403), ("viewer", 200, 403), ("clerk", 403, 403),
     ("alice", 403, 403), ("charlie", 403, 403)],
)  # fmt: skip
def test_providers_are_changed_by_superusers_only(cast, who, read, write):
    provider = cast["provider"]
    assert status_of(cast, who, "get", "/api/providers/") == read
    change = {"base_url": "https://api2.example.com", "credential": "sk-new"}
    assert status_of(cast, who, "patch", f"/api/providers/{provider.pk}/", change) == write
    created = {"name": f"p-{who}", "kind": "openai", "base_url": "https://api.openai.com",
               "credential": "sk-x"}  # fmt: skip
    assert status_of(cast, who, "post", "/api/providers/", created) == (
        201 if write == 200 else 403
    )
    provider.refresh_from_db()
    assert provider.credential == ("sk-new" if write == 200 else "sk-ant-org-secret")


def test_a_new_base_url_needs_the_credential_again_on_the_api(cast):
    provider, root = cast["provider"], cast["clients"]["root"]
    url = f"/api/providers/{provider.pk}/"
    moved = root.patch(url, {"base_url": "https://listener.example.com"}, format="json")
    assert moved.status_code == 400 and "credential" in moved.json()
    provider.refresh_from_db()
    assert provider.base_url == "https://api.anthropic.com"
    assert provider.credential == "sk-ant-org-secret"
    # other changes keep the credential
    assert root.patch(url, {"enabled": False}, format="json").status_code == 200
    provider.refresh_from_db()
    assert provider.credential == "sk-ant-org-secret"


def test_a_provider_saved_with_a_new_base_url_drops_the_old_credential(cast):
    provider = Provider.objects.get(pk=cast["provider"].pk)
    provider.base_url = "https://listener.example.com"
    provider.save()
    provider = Provider.objects.get(pk=provider.pk)
    assert not provider.has_credential and provider.credential == ""
    provider.base_url = "https://other.example.com"
    provider.credential = "sk-for-other"
    provider.save(update_fields=["base_url", "credential_encrypted"])
    assert Provider.objects.get(pk=provider.pk).credential == "sk-for-other"


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com",
        "https://user:pw@api.example.com",
        "https://127.0.0.1:8443",
        "https://127.1",
        "https://2130706433",
        "https://0x7f.0.0.1",
        "https://[::1]",
        "https://[::ffff:127.0.0.1]",
        "https://169.254.169.254",
        "https://metadata.google.internal",
        "https://10.0.0.5",
        "https://192.168.1.1",
        "https://172.16.0.1",
        "https://100.64.0.1",
        "https://0.0.0.0",
        "https://localhost",
        "https://api.localhost",
        "https://[fe80::1]",
        "https://[fd00::1]",
        "ftp://api.example.com",
        "https://api.example.com/?x=1",
        "api.example.com",
    ],
)
def test_provider_urls_to_private_targets_are_refused(cast, settings, url):
    settings.LLMPROXY_ALLOW_PRIVATE_UPSTREAMS = False
    with pytest.raises(ValidationError):
        check_base_url(url)
    body = {"name": "probe", "kind": "openai", "base_url": url, "credential": "sk-x"}
    response = cast["clients"]["root"].post("/api/providers/", body, format="json")
    assert response.status_code == 400 and "base_url" in response.json()
    with pytest.raises(CommandError, match="--base-url"):
        call_command("addprovider", "probe", "--kind", "openai", "--base-url", url,
                     "--api-key", "sk-x")  # fmt: skip
    assert not Provider.objects.filter(name="probe").exists()


@pytest.mark.parametrize("url", ["https://api.anthropic.com", "https://8.8.8.8/"])
def test_public_https_urls_are_taken(settings, url):
    settings.LLMPROXY_ALLOW_PRIVATE_UPSTREAMS = False
    assert check_base_url(url) == url.rstrip("/")


def test_the_setting_allows_private_targets_over_http_too(settings):
    settings.LLMPROXY_ALLOW_PRIVATE_UPSTREAMS = True
    assert check_base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_base_url("https://10.1.2.3") == "https://10.1.2.3"
    with pytest.raises(ValidationError, match="user name"):
        check_base_url("http://u:p@127.0.0.1:8080")
    with pytest.raises(ValidationError, match="https"):
        check_base_url("http://api.example.com")  # public targets still want https


# --- superuser only: staff and superuser flags --------------------------------------------


@pytest.mark.parametrize(
    ("who", "flag_status", "email_status", "superuser_status"),
    [("root", 200, 200, 200), ("manager", 403, 200, 403), ("viewer", 403, 403, 403),
     ("clerk", 403, 403, 403), ("alice", 403, 403, 403), ("charlie", 403, 403, 403)],
)  # fmt: skip
def test_staff_flags_are_set_by_superusers_only(
    cast, who, flag_status, email_status, superuser_status
):
    users = cast["users"]
    charlie, root = f"/api/users/{users['charlie'].pk}/", f"/api/users/{users['root'].pk}/"
    assert status_of(cast, who, "patch", charlie, {"is_staff": True}) == flag_status
    assert status_of(cast, who, "patch", charlie, {"is_superuser": True}) == flag_status
    assert status_of(cast, who, "patch", charlie, {"email": f"{who}@x.org"}) == email_status
    assert status_of(cast, who, "patch", root, {"email": f"{who}@x.org"}) == superuser_status
    create = {"username": f"made-by-{who}", "is_staff": True}
    assert status_of(cast, who, "post", "/api/users/", create) == (
        201 if flag_status == 200 else 403
    )
    users["charlie"].refresh_from_db()
    assert users["charlie"].is_staff == (flag_status == 200)
    assert users["charlie"].is_superuser == (flag_status == 200)


# --- superuser only: other people's tokens ------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 201), ("manager", 403), ("viewer", 403), ("clerk", 403), ("alice", 403),
     ("charlie", 403)],
)  # fmt: skip
def test_tokens_for_someone_else_are_minted_by_superusers_only(cast, who, status):
    target = cast["users"]["alice" if who != "alice" else "charlie"]
    body = {"name": f"for-{target.username}", "user": target.pk}
    response = cast["clients"][who].post("/api/tokens/", body, format="json")
    assert response.status_code == status, response.content
    made = ApiToken.objects.filter(name=body["name"], user=target)
    assert made.exists() == (status == 201)
    if status == 201:
        acting = APIClient()
        acting.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
        assert acting.get("/api/keys/").json()["count"] == 1  # alice's own key


@pytest.mark.parametrize("who", CAST)
def test_everyone_mints_and_lists_their_own_tokens(cast, who):
    response = cast["clients"][who].post("/api/tokens/", {"name": "mine"}, format="json")
    assert response.status_code == 201
    assert ApiToken.objects.get(pk=response.json()["id"]).user == cast["users"][who]
    listed = {row["user"] for row in cast["clients"][who].get("/api/tokens/").json()}
    assert listed == ({u.pk for u in cast["users"].values()} if who == "root" else
                      {cast["users"][who].pk})  # fmt: skip


def test_another_persons_token_is_deleted_by_superusers_only(cast):
    alices = ApiToken.objects.get(user=cast["users"]["alice"])
    for who in ("manager", "clerk", "charlie"):
        assert status_of(cast, who, "delete", f"/api/tokens/{alices.pk}/") == 404
    assert status_of(cast, "root", "delete", f"/api/tokens/{alices.pk}/") == 204


# --- the admin ----------------------------------------------------------------------------


def admin_client(cast, who: str):
    from django.test import Client

    client = Client()
    client.force_login(cast["users"][who])
    return client


@pytest.mark.parametrize(("who", "status"), [("root", 200), ("manager", 403), ("clerk", 403)])
def test_the_admin_lets_only_superusers_change_providers(cast, who, status):
    provider = cast["provider"]
    page = admin_client(cast, who).get(f"/admin/llmproxy/provider/{provider.pk}/change/")
    if who == "manager":  # view permission: a read-only page, no form to post
        assert page.status_code == 200 and b'name="base_url"' not in page.content
        posted = admin_client(cast, who).post(
            f"/admin/llmproxy/provider/{provider.pk}/change/",
            {"name": "anthropic", "kind": "anthropic", "base_url": "https://evil.example.com",
             "api_key": "", "extra_headers": "{}", "enabled": "on",
             "routes-TOTAL_FORMS": "0", "routes-INITIAL_FORMS": "0"},
        )  # fmt: skip
        assert posted.status_code == 403
    else:
        assert page.status_code == status
    provider.refresh_from_db()
    assert provider.base_url == "https://api.anthropic.com"


def _provider_form(**changes) -> dict:
    form = {"name": "anthropic", "kind": "anthropic", "base_url": "https://api.anthropic.com",
            "api_key": "", "extra_headers": "{}", "enabled": "on",
            "routes-TOTAL_FORMS": "0", "routes-INITIAL_FORMS": "0"}  # fmt: skip
    return form | changes


def test_the_admin_asks_for_the_key_again_when_the_base_url_changes(cast, settings):
    settings.LLMPROXY_ALLOW_PRIVATE_UPSTREAMS = False
    provider, root = cast["provider"], admin_client(cast, "root")
    path = f"/admin/llmproxy/provider/{provider.pk}/change/"
    moved = root.post(path, _provider_form(base_url="https://listener.example.com"))
    assert moved.status_code == 200 and b"enter the API key for the new address" in moved.content
    provider.refresh_from_db()
    assert provider.base_url == "https://api.anthropic.com"
    assert provider.credential == "sk-ant-org-secret"
    refused = root.post(path, _provider_form(base_url="https://169.254.169.254", api_key="k"))
    assert refused.status_code == 200 and b"metadata address" in refused.content
    kept = root.post(path, _provider_form(extra_headers='{"x-a": "b"}'))
    assert kept.status_code == 302
    with_key = root.post(path, _provider_form(base_url="https://b.example.com", api_key="sk-b"))
    assert with_key.status_code == 302
    provider.refresh_from_db()
    assert (provider.base_url, provider.credential) == ("https://b.example.com", "sk-b")


def test_the_admin_keeps_staff_flags_and_superusers_from_staff(cast):
    manager, users = admin_client(cast, "manager"), cast["users"]
    charlie = users["charlie"]
    page = manager.get(f"/admin/auth/user/{charlie.pk}/change/")
    assert page.status_code == 200 and b'name="is_staff"' not in page.content
    assert b'name="is_superuser"' not in page.content and b'name="email"' in page.content
    posted = manager.post(
        f"/admin/auth/user/{charlie.pk}/change/",
        {"username": "charlie", "email": "c@example.com", "is_staff": "on",
         "is_superuser": "on", "is_active": "on", "date_joined_0": "2026-01-01",
         "date_joined_1": "00:00:00"},
    )  # fmt: skip
    assert posted.status_code == 302, posted.content[:2000]
    charlie.refresh_from_db()
    assert charlie.email == "c@example.com" and not charlie.is_staff and not charlie.is_superuser
    superuser_page = manager.get(f"/admin/auth/user/{users['root'].pk}/change/")
    assert superuser_page.status_code == 200 and b'name="email"' not in superuser_page.content
    assert manager.post(f"/admin/auth/user/{users['root'].pk}/change/", {}).status_code == 403
    deleted = manager.post(
        "/admin/auth/user/",
        {"action": "delete_selected", "_selected_action": [users["root"].pk], "post": "yes"},
    )
    assert deleted.status_code == 403
    assert type(users["root"]).objects.filter(pk=users["root"].pk).exists()
    managers = users["manager"].groups.get()
    assert manager.post(f"/admin/auth/group/{managers.pk}/change/",
                        {"name": "managers", "permissions": []}).status_code == 403  # fmt: skip
    assert manager.get("/admin/auth/group/add/").status_code == 403
    assert managers.permissions.exists()
    root = admin_client(cast, "root")
    root.post(
        f"/admin/auth/user/{charlie.pk}/change/",
        {"username": "charlie", "email": "c@example.com", "is_staff": "on", "is_active": "on",
         "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"},
    )  # fmt: skip
    charlie.refresh_from_db()
    assert charlie.is_staff


def test_the_admin_mints_tokens_for_oneself_unless_superuser(cast):
    manager, users = admin_client(cast, "manager"), cast["users"]
    refused = manager.post("/admin/accounts/apitoken/add/", {"user": users["root"].pk,
                                                             "name": "steal"})  # fmt: skip
    assert refused.status_code == 200  # the form refuses a user it does not offer
    assert not ApiToken.objects.filter(name="steal").exists()
    own = manager.post("/admin/accounts/apitoken/add/", {"user": users["manager"].pk,
                                                         "name": "mine"})  # fmt: skip
    assert own.status_code == 200 and b"Copy the new API token now" in own.content
    listed = manager.get("/admin/accounts/apitoken/")
    assert {token.user.username for token in listed.context["cl"].result_list} == {"manager"}
    assert ApiToken.objects.filter(name="mine", user=users["manager"]).exists()
    root = admin_client(cast, "root")
    made = root.post("/admin/accounts/apitoken/add/", {"user": users["alice"].pk, "name": "a"})
    assert made.status_code == 200 and ApiToken.objects.filter(name="a", user=users["alice"])


def test_a_new_entra_authority_drops_the_credential_and_must_be_public(cast, settings):
    """Azure with Entra sends its client secret to the authority: the same rule as a base URL."""
    entra = '{"tenant_id": "t", "client_id": "c", "client_secret": "s3cret"}'
    provider, _ = provider_services.upsert_provider(
        name="azure", kind="azure", base_url="https://res.openai.azure.com", credential=entra,
        options={"auth": "entra", "authority": "https://login.microsoftonline.com"},
    )  # fmt: skip
    provider = Provider.objects.get(pk=provider.pk)
    provider.options = {**provider.options, "authority": "https://listener.example.com"}
    provider.save()
    assert Provider.objects.get(pk=provider.pk).credential == ""
    settings.LLMPROXY_ALLOW_PRIVATE_UPSTREAMS = False
    with pytest.raises(ValueError, match="authority"):
        provider_services.upsert_provider(
            name="azure", kind="azure", base_url="https://res.openai.azure.com",
            credential=entra, options={"auth": "entra", "authority": "https://169.254.169.254"},
        )  # fmt: skip


def test_nobody_deletes_their_own_account_on_the_api_or_in_the_admin(cast, django_user_model):
    # The deletion's audit entry names its actor, so the account deleted cannot be the actor
    # (on PostgreSQL the commit then failed: a 500 that schemathesis found).
    root = cast["users"]["root"]
    answer = cast["clients"]["root"].delete(f"/api/users/{root.pk}/")
    assert answer.status_code == 403 and "your own account" in answer.json()["detail"]
    assert (
        admin_client(cast, "root")
        .post(f"/admin/auth/user/{root.pk}/delete/", {"post": "yes"})
        .status_code
        == 403
    )
    assert django_user_model.objects.filter(pk=root.pk).exists()
    charlie = cast["users"]["charlie"]
    assert status_of(cast, "root", "delete", f"/api/users/{charlie.pk}/") == 204
    assert not django_user_model.objects.filter(pk=charlie.pk).exists()
