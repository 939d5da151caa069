"""The real Claude Code 2.1.332 signs in to the gateway through its interactive ``/login``
(the device grant), the browser's part done by same-origin requests against the real
/device page with a person signed in with a local password; then ``claude -p`` runs on that
sign-in, its usage is the person's, the client refreshes its token, ``claude auth logout``
revokes it, and a disabled person's next call fails."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from accounts.models import Person, SignInToken
from tests.e2e import claude_tui
from tests.e2e.browser_step import Browser
from tests.e2e.clients import ClientRun, _environment, _run, require_binary
from tests.fakes import MODEL
from tests.fakes import fake_provider as fu

pytestmark = [pytest.mark.e2e, pytest.mark.cli]


@pytest.fixture
def person(django_user_model):
    return django_user_model.objects.create_user("dev", "dev@example.com", "pw-dev-123")


@pytest.fixture(autouse=True)
def fast_polls(settings):
    settings.LLMPROXY_DEVICE_POLL_SECONDS = 1


def sign_in(gateway, home, sink) -> list[str]:
    claude_tui.prepare_home(home, gateway.url)

    def approve(user_code: str) -> None:
        browser = Browser(gateway.url)
        browser.sign_in("dev", "pw-dev-123")
        assert browser.decide(user_code).status_code == 200

    return claude_tui.login(home, sink, approve)


def claude_p(home, sink, *args: str) -> ClientRun:
    """``claude -p`` on the saved sign-in: no key, no base URL in the environment."""
    binary = require_binary("claude")
    env = _environment(home, sink, {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                                    "DISABLE_TELEMETRY": "1"})  # fmt: skip
    argv = [str(binary), "-p", "say hi", "--output-format", "json", "--model", MODEL, *args]
    return _run(argv, env, home / "work", 120)


def a_turn_is_billed_to(person, home, sink, fake, recorded, text: str) -> None:
    """``claude -p`` on the saved sign-in answers, and its usage is the person's, under the
    sign-in credential."""
    fake.set_default(fu.text(text, input_tokens=30, output_tokens=4))
    run = claude_p(home, sink)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.result["result"] == text
    (event,) = recorded(1)
    assert event.person_id == person.pk and event.credential == "claude_code"


def live(kind: str) -> list[SignInToken]:
    return list(SignInToken.objects.filter(kind=kind, revoked_at__isnull=True))


def test_claude_code_signs_in_with_login_runs_refreshes_and_logs_out(
    gateway, fake, provider, person, tmp_path, sink, recorded
):
    screens = sign_in(gateway, tmp_path, sink)
    assert any("Trust gateway" in screen for screen in screens)
    saved = claude_tui.credentials(tmp_path)["enterpriseGateway"]
    assert saved["url"] == gateway.url and saved["jwt"].startswith("llmpa-")
    assert saved["tokenEndpoint"] == gateway.url + "/oauth/token"
    (access,) = live("access")
    assert access.person == person and access.client == "claude_code"

    a_turn_is_billed_to(person, tmp_path, sink, fake, recorded, "Hi from the fake provider.")
    assert ("GET", "/managed/settings") in gateway.app.requests

    # Refresh: with under five minutes left, the client swaps its refresh token first.
    path = tmp_path / ".claude" / ".credentials.json"
    stored = json.loads(path.read_text())
    stored["enterpriseGateway"]["expiresAt"] = int((time.time() + 60) * 1000)
    path.write_text(json.dumps(stored))
    gateway.app.requests.clear()
    run = claude_p(tmp_path, sink)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert ("POST", "/oauth/token") in gateway.app.requests
    refreshed = claude_tui.credentials(tmp_path)["enterpriseGateway"]["jwt"]
    assert refreshed != saved["jwt"]
    assert [token.prefix for token in live("access")] == [refreshed[:12]]

    # claude auth logout revokes both tokens at the revocation endpoint (RFC 7009).
    logout = _run([str(require_binary("claude")), "auth", "logout"],
                  _environment(tmp_path, sink, {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}),
                  tmp_path / "work", 60)  # fmt: skip
    assert logout.returncode == 0, logout.stderr[-2000:]
    assert ("POST", "/oauth/revoke") in gateway.app.requests
    assert live("access") == [] and live("refresh") == []
    # The interactive client also tries its vendor's hosts (downloads, plugins); the sink
    # refused them all, and nothing meant for the gateway went through it.
    assert not [line for line in sink.requests if "127.0.0.1" in line]


def test_over_budget_then_disabled_a_signed_in_claude_code_is_told_why_and_cut_off(
    gateway, fake, provider, person, tmp_path, sink
):
    sign_in(gateway, tmp_path, sink)
    fake.set_default(fu.text("ok"))
    assert claude_p(tmp_path, sink).returncode == 0

    # Over the person's budget: the gateway's message as a spend limit, one attempt only.
    Person.objects.update_or_create(user=person, defaults={"budget_usd": Decimal(0)})
    time.sleep(1)  # the gateway's policy refresh
    gateway.app.requests.clear()
    run = claude_p(tmp_path, sink)
    assert run.returncode != 0
    assert run.result["result"].startswith("Your budget of $0"), run.result["result"]
    assert [r for r in gateway.app.requests if r[1] == "/v1/messages"] == [("POST", "/v1/messages")]
    Person.objects.filter(user=person).update(budget_usd=None)
    Person.objects.get(user=person).save()  # saved, so the policy cache hears of it
    person.is_active = False
    person.save()
    time.sleep(1)  # the gateway's policy refresh
    run = claude_p(tmp_path, sink)
    assert run.returncode != 0
    answer = (run.stdout + run.stderr).lower()
    assert "/login" in answer or "revoked" in answer, answer[-2000:]
    assert len(fake.requests) == 1  # the refused call never reached the provider
