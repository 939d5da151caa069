"""Single sign-on in headless Chromium against a real OpenID provider (npm oidc-provider on
loopback): first sign-in makes the person with teams and staff from their IdP groups, a
group change at the IdP is applied at the next sign-in, a foreign email domain is refused,
and a person disabled at the IdP can neither sign in nor refresh a sign-in token."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from accounts import keys, signin
from accounts.models import Identity, IdpGroupMapping, Person, Team
from tests.console.test_browser import browser, shot  # noqa: F401 - the fixture
from tests.oidc import CLIENT_ID, CLIENT_SECRET, OidcProvider

pytestmark = [pytest.mark.e2e]

ACCOUNTS = {
    "ann-sub": {"email": "ann@corp.test", "name": "Ann", "groups": ["eng", "llmproxy-admins"]},
    "eve-sub": {"email": "eve@elsewhere.test", "name": "Eve", "groups": ["eng"]},
    "dan-sub": {"email": "dan@corp.test", "name": "Dan", "groups": ["llmproxy-viewers"]},
}


@pytest.fixture
def idp(gateway, settings):
    with OidcProvider(ACCOUNTS, [f"{gateway.url}/oidc/callback/"]) as provider:
        settings.LLMPROXY_OIDC_ISSUER = provider.issuer
        settings.OIDC_RP_CLIENT_ID = CLIENT_ID
        settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
        settings.OIDC_RP_SCOPES = "openid email profile groups offline_access"
        settings.LLMPROXY_OIDC_ALLOWED_DOMAINS = ["corp.test"]
        settings.LLMPROXY_OIDC_GROUP_TEAMS = [("eng", "Engineering")]
        settings.LLMPROXY_OIDC_STAFF_GROUPS = ["llmproxy-viewers"]
        settings.LLMPROXY_OIDC_SUPERUSER_GROUPS = ["llmproxy-admins"]
        yield provider


def sign_in(browser, gateway, login: str, start: str = "/admin/"):  # noqa: F811
    """A new browser (no cookies) signs in at the IdP from ``start``; returns the page."""
    page = browser.new_context().new_page()
    page.goto(gateway.url + start)
    page.click("#sso-login")
    page.wait_for_selector("#login")
    page.fill("#login", login)
    page.click("#submit")
    page.wait_for_load_state("networkidle")
    return page


def test_first_sign_in_makes_the_person_with_teams_and_staff_from_groups(
    gateway,
    idp,
    browser,  # noqa: F811
):
    # An admin-made mapping adds to the environment's: research → Research.
    IdpGroupMapping.objects.create(idp_group="research", team=Team.objects.create(name="Research"))
    page = sign_in(browser, gateway, "ann-sub")
    page.wait_for_selector("#dashboard-link")  # staff: the admin index
    assert page.locator("a[href='/admin/accounts/']").count() == 1  # a superuser's
    shot(page, "sso-1-admin")
    ann = Identity.objects.get(issuer=idp.issuer, subject="ann-sub").user
    assert ann.email == "ann@corp.test" and ann.is_staff and ann.is_superuser
    assert not ann.has_usable_password()
    assert set(ann.teams.values_list("name", flat=True)) == {"Engineering"}
    assert Person.objects.get(user=ann).default_team.name == "Engineering"
    page.goto(gateway.url + "/dashboard/")
    assert page.locator("svg.chart").count() == 1

    # At the IdP Ann leaves the admins and eng and joins research: applied at the next
    # sign-in; a membership made by hand (Sandbox) stays.
    Team.objects.create(name="Sandbox").members.add(ann)
    idp.change("ann-sub", groups=["research"])
    page = sign_in(browser, gateway, "ann-sub", start="/login/?next=/admin/")
    ann.refresh_from_db()
    assert not ann.is_staff and not ann.is_superuser
    assert set(ann.teams.values_list("name", flat=True)) == {"Research", "Sandbox"}
    assert Person.objects.get(user=ann).default_team.name == "Research"
    assert get_user_model().objects.filter(email="ann@corp.test").count() == 1
    # No longer staff: the admin asks for a staff account.
    assert "/admin/login/" in page.url
    shot(page, "sso-2-not-staff")


def test_a_foreign_email_domain_is_refused(gateway, idp, browser):  # noqa: F811
    page = sign_in(browser, gateway, "eve-sub", start="/login/")
    assert page.url.startswith(gateway.url + "/login/")
    assert "People from elsewhere.test may not sign in here." in page.content()
    shot(page, "sso-3-domain-refused")
    assert not get_user_model().objects.filter(email="eve@elsewhere.test").exists()
    assert not Identity.objects.exists()


def test_a_person_disabled_at_the_idp_loses_access_at_the_next_refresh(
    gateway,
    idp,
    browser,  # noqa: F811
):
    page = sign_in(browser, gateway, "dan-sub", start="/login/?next=/dashboard/")
    page.wait_for_selector("svg.chart")  # staff, not superuser: the dashboard opens
    dan = Identity.objects.get(subject="dan-sub").user
    assert dan.is_staff and not dan.is_superuser
    assert Identity.objects.get(subject="dan-sub").refresh_token  # kept, encrypted
    issued = signin.issue(person=dan, client="cli")
    # While the IdP says yes, refreshes work, and group changes there are applied on the way.
    idp.change("dan-sub", groups=["eng"])
    issued = signin.refresh(secret=issued.refresh_token)
    assert set(dan.teams.values_list("name", flat=True)) == {"Engineering"}
    dan.refresh_from_db()
    assert not dan.is_staff

    idp.change("dan-sub", disabled=True)
    with pytest.raises(signin.SignInError) as refused:
        signin.refresh(secret=issued.refresh_token)
    assert refused.value.code == "invalid_grant"
    assert not dan.sign_in_tokens.live().exists()  # the whole sign-in is revoked

    page = browser.new_context().new_page()
    page.goto(gateway.url + "/login/")
    page.click("#sso-login")
    page.fill("#login", "dan-sub")
    page.click("#submit")
    page.wait_for_selector("#refused")  # the IdP refuses the login itself
    shot(page, "sso-4-disabled-at-idp")


def test_a_person_disabled_in_the_admin_loses_the_web_session_and_refreshes(
    gateway,
    idp,
    browser,  # noqa: F811
):
    page = sign_in(browser, gateway, "ann-sub")
    page.wait_for_selector("#dashboard-link")
    ann = Identity.objects.get(subject="ann-sub").user
    issued = signin.issue(person=ann, client="cli")
    ann.is_active = False
    ann.save()
    page.goto(gateway.url + "/dashboard/")
    assert "/admin/login/" in page.url
    with pytest.raises(signin.SignInError):
        signin.refresh(secret=issued.refresh_token)
    # Signing in again at the IdP does not let them back in.
    page = sign_in(browser, gateway, "ann-sub", start="/login/")
    assert "This account is disabled; ask an admin." in page.content()


def test_a_person_signs_in_to_their_own_page_and_makes_and_revokes_a_key(
    gateway,
    idp,
    browser,  # noqa: F811
):
    idp.change("eve-sub", email="eve@corp.test")  # now inside the allowed domain
    page = sign_in(browser, gateway, "eve-sub", start="/login/")
    assert page.url == gateway.url + "/me/"  # not staff: their own page
    eve = Identity.objects.get(subject="eve-sub").user
    assert not eve.is_staff and page.locator("#no-team").count() == 0  # in Engineering
    page.fill("#id_name", "eve laptop")
    page.fill("#id_budget_usd", "5")
    page.click("#new-key input[type=submit]")
    secret = page.input_value("#new-key-secret")
    key = eve.api_keys.get()
    assert key.name == "eve laptop" and key.team.name == "Engineering"
    assert keys.digest_matches(secret, key.digest)
    shot(page, "sso-5-me-new-key")
    page.goto(gateway.url + "/me/")
    assert secret not in page.content()
    page.click("#keys input.revoke")
    page.wait_for_load_state("networkidle")
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert page.locator("#keys").inner_text().count("revoked") == 1
    shot(page, "sso-6-me-revoked")
