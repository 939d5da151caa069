"""Single sign-on without a browser: its settings, the pages with no IdP configured (password
login as before), an IdP that cannot be reached, the group rules, the admin's pages.

The browser flow against a real OpenID provider is tests/console/test_sso_browser.py."""

from __future__ import annotations

import socket

import pytest
from django.urls import reverse

from accounts import signin, sso
from accounts.models import Identity, IdpGroupMapping, Person, Team
from llmproxy import env
from llmproxy.core import crypto
from tests.project.test_settings import load_settings

pytestmark = pytest.mark.django_db

OIDC = {
    "DJANGO_DEBUG": "true",
    "LLMPROXY_OIDC_ISSUER": "https://idp.example/realms/corp/",
    "LLMPROXY_OIDC_CLIENT_ID": "llmproxy",
    "LLMPROXY_OIDC_CLIENT_SECRET": "s3cret",
}


def test_a_full_oidc_configuration_loads(tmp_path):
    result = load_settings(
        tmp_path,
        **OIDC,
        LLMPROXY_OIDC_ALLOWED_DOMAINS="Corp.example, @eu.corp.example",
        LLMPROXY_OIDC_GROUP_TEAMS="eng=Engineering, ml=Research",
        LLMPROXY_OIDC_STAFF_GROUPS="llmproxy-staff",
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"LLMPROXY_OIDC_CLIENT_SECRET": ""}, "LLMPROXY_OIDC_CLIENT_SECRET"),
        ({"LLMPROXY_OIDC_ISSUER": "idp.example"}, "LLMPROXY_OIDC_ISSUER"),
        ({"LLMPROXY_OIDC_ISSUER": "https://idp.example/?x=1"}, "LLMPROXY_OIDC_ISSUER"),
        ({"LLMPROXY_OIDC_GROUP_TEAMS": "eng"}, "LLMPROXY_OIDC_GROUP_TEAMS"),
        ({"LLMPROXY_OIDC_SCOPES": "email profile"}, "LLMPROXY_OIDC_SCOPES"),
        ({"LLMPROXY_OIDC_SIGN_ALGO": "HS256"}, "LLMPROXY_OIDC_SIGN_ALGO"),
        ({"LLMPROXY_OIDC_SESSION_SECONDS": "soon"}, "LLMPROXY_OIDC_SESSION_SECONDS"),
    ],
)
def test_malformed_oidc_settings_stop_startup_naming_the_variable(tmp_path, variables, named):
    result = load_settings(tmp_path, **{**OIDC, **variables})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr
    assert "s3cret" not in result.stderr


def test_env_pairs_and_url():
    pairs = env.env_pairs({"X": "eng=Engineering, a b = Team B"}, "X")
    assert pairs == [("eng", "Engineering"), ("a b", "Team B")]
    assert env.env_url({"U": "https://idp.example/r/"}, "U") == "https://idp.example/r"
    assert env.env_url({}, "U") is None


def test_without_an_idp_password_login_works_and_sso_pages_are_404(client, alice):
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b"sso-login" not in page.content
    assert b"sso-login" not in client.get(reverse("admin:login")).content
    assert client.get(reverse("oidc_authentication_init")).status_code == 404
    assert client.get(reverse("oidc_authentication_callback")).status_code == 404
    answer = client.post(reverse("login"), {"username": "alice", "password": "pw-alice-123"})
    assert answer.status_code == 302
    assert client.session["_auth_user_id"] == str(alice.pk)
    # A local account asks no IdP at refresh.
    issued = signin.issue(person=alice, client="cli")
    assert signin.refresh(secret=issued.refresh_token).access_token


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_idp(settings):
    settings.LLMPROXY_OIDC_ISSUER = f"http://127.0.0.1:{_closed_port()}"
    settings.OIDC_RP_CLIENT_ID = "llmproxy"
    settings.OIDC_RP_CLIENT_SECRET = "s3cret"
    settings.OIDC_TIMEOUT = 2.0
    return settings.LLMPROXY_OIDC_ISSUER


def test_an_unreachable_idp_is_a_clear_page_not_a_500(client, unreachable_idp):
    assert b"sso-login" in client.get(reverse("login")).content
    page = client.get(reverse("oidc_authentication_init"))
    assert page.status_code == 503
    assert b"The identity provider cannot be reached" in page.content


def test_a_refresh_is_refused_while_the_idp_cannot_be_asked(alice, unreachable_idp):
    Identity.objects.create(
        user=alice, issuer=unreachable_idp, subject="alice-sub", refresh_token=crypto.encrypt("rt")
    )
    issued = signin.issue(person=alice, client="claude_code")
    assert sso.still_allowed(alice) is False
    with pytest.raises(signin.SignInError) as refused:
        signin.refresh(secret=issued.refresh_token)
    assert refused.value.code == "invalid_grant"


def test_a_local_account_is_still_allowed_with_an_idp_configured(alice, unreachable_idp):
    assert sso.still_allowed(alice) is True
    alice.is_active = False
    assert sso.still_allowed(alice) is False


def test_group_rules_manage_only_the_teams_they_name(alice, settings):
    settings.LLMPROXY_OIDC_GROUP_TEAMS = [("eng", "Engineering"), ("ml", "Research")]
    settings.LLMPROXY_OIDC_STAFF_GROUPS = ["viewers"]
    settings.LLMPROXY_OIDC_SUPERUSER_GROUPS = []
    sandbox = Team.objects.create(name="Sandbox")
    sandbox.members.add(alice)
    IdpGroupMapping.objects.create(idp_group="ops", team=Team.objects.create(name="Ops"))
    IdpGroupMapping.objects.create(idp_group="root", make_superuser=True)

    sso.apply_groups(alice, ["eng", "ops", "viewers"])
    alice.refresh_from_db()
    assert set(alice.teams.values_list("name", flat=True)) == {"Engineering", "Ops", "Sandbox"}
    assert alice.is_staff and not alice.is_superuser
    assert Person.objects.get(user=alice).default_team.name == "Engineering"

    sso.apply_groups(alice, ["ml", "root"])
    alice.refresh_from_db()
    assert set(alice.teams.values_list("name", flat=True)) == {"Research", "Sandbox"}
    assert alice.is_staff and alice.is_superuser
    assert Person.objects.get(user=alice).default_team.name == "Research"

    sso.apply_groups(alice, [])
    alice.refresh_from_db()
    assert set(alice.teams.values_list("name", flat=True)) == {"Sandbox"}
    assert not alice.is_staff and not alice.is_superuser
    assert Person.objects.get(user=alice).default_team.name == "Sandbox"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "1", "email": "a@corp.example"}, None),
        ({"sub": "1", "email": "a@CORP.example", "email_verified": True}, None),
        ({"sub": "1", "email": "a@evil.example"}, "People from evil.example"),
        ({"sub": "1", "email": "a@corp.example", "email_verified": False}, "not verified"),
        ({"sub": "1"}, "no email"),
        ({"email": "a@corp.example"}, "no subject"),
    ],
)
def test_who_may_sign_in(settings, claims, reason):
    settings.LLMPROXY_OIDC_ALLOWED_DOMAINS = ["corp.example"]
    refused = sso.refusal(claims)
    assert (refused is None) if reason is None else (reason in refused)


def test_admin_pages_for_identities_and_group_mappings(admin_client, alice):
    Identity.objects.create(
        user=alice, issuer="https://idp.example", subject="s", refresh_token=crypto.encrypt("rt")
    )
    identities = admin_client.get(reverse("admin:accounts_identity_changelist"))
    assert identities.status_code == 200 and b"alice" in identities.content
    identity = Identity.objects.get()
    change = admin_client.get(reverse("admin:accounts_identity_change", args=[identity.pk]))
    assert change.status_code == 200 and identity.refresh_token.encode() not in change.content
    team = Team.objects.create(name="Engineering")
    added = admin_client.post(
        reverse("admin:accounts_idpgroupmapping_add"),
        {"idp_group": "eng", "team": team.pk, "make_staff": "on"},
    )
    assert added.status_code == 302
    assert IdpGroupMapping.objects.get().team == team


def test_a_person_made_beforehand_is_taken_over_only_by_a_verified_email(alice, settings):
    settings.LLMPROXY_OIDC_ISSUER = "https://idp.example"
    backend = sso.OidcBackend()
    claims = {"sub": "alice-at-idp", "email": "ALICE@example.com"}
    assert list(backend.filter_users_by_claims(claims)) == []  # not said to be verified
    verified = {**claims, "email_verified": True}
    assert list(backend.filter_users_by_claims(verified)) == [alice]
    assert sso.sign_in(claims=verified, user=alice, refresh_token="rt") == alice
    identity = Identity.objects.get(subject="alice-at-idp")
    assert identity.user == alice and crypto.decrypt(identity.refresh_token) == "rt"
    # From now on the identity finds her, whatever the email says.
    moved = {"sub": "alice-at-idp", "email": "alice@new.example"}
    assert list(backend.filter_users_by_claims(moved)) == [alice]
    assert sso.sign_in(claims=moved, refresh_token=None) == alice
    alice.refresh_from_db()
    assert alice.email == "alice@new.example"
    assert crypto.decrypt(Identity.objects.get().refresh_token) == "rt"  # kept
