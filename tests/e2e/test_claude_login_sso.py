"""Claude Code's ``/login`` with the web side behind single sign-on: the real Claude Code
2.1.332 runs ``/login`` in a pty; the person opens the /device link in Chromium, is sent to
the real OpenID provider (npm oidc-provider on loopback), signs in there, comes back and
approves; then ``claude -p`` runs on that sign-in and its usage is the person the IdP made."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from accounts.models import Identity
from tests.console.test_browser import browser  # noqa: F401 - the fixture
from tests.console.test_sso_browser import idp, sign_in  # noqa: F401 - the fixture
from tests.e2e import claude_tui
from tests.e2e.test_claude_login import a_turn_is_billed_to, live

pytestmark = [pytest.mark.e2e, pytest.mark.cli]


def test_claude_code_login_approved_by_a_person_signed_in_through_the_idp(
    gateway,
    fake,
    provider,
    idp,  # noqa: F811
    browser,  # noqa: F811
    tmp_path,
    sink,
    recorded,
    settings,
):
    settings.LLMPROXY_DEVICE_POLL_SECONDS = 1
    claude_tui.prepare_home(tmp_path, gateway.url)

    def approve(user_code: str) -> None:
        # Signed out: /device sends the person to /login/, its button to the IdP and back.
        page = sign_in(browser, gateway, "ann-sub", start=f"/device?user_code={user_code}")
        page.wait_for_selector("button[type=submit]")
        page.click("button[type=submit]")  # Continue: the code as the link gave it
        page.wait_for_selector("button.approve")
        page.click("button.approve")
        page.wait_for_load_state("networkidle")

    claude_tui.login(tmp_path, sink, approve)
    ann = get_user_model().objects.get(email="ann@corp.test")
    assert Identity.objects.filter(user=ann, issuer=idp.issuer).exists()  # made by the IdP
    (access,) = live("access")
    assert access.person == ann and access.client == "claude_code"

    a_turn_is_billed_to(ann, tmp_path, sink, fake, recorded, "Hi, Ann.")
