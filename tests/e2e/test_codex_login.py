"""The real Codex CLI signed in with ``llmproxy login``: its provider's auth command is
``llmproxy token``, which prints the person's current access token; a revoked sign-in makes
Codex run the command again after the gateway's 401, and the command then fails saying to
run ``llmproxy login``."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts import signin
from tests.e2e.clients import run_codex
from tests.e2e.test_codex import agent_text
from tests.e2e.test_login_cli import COMMAND, cli_env, login
from tests.fakes import fake_openai as fo

pytestmark = [pytest.mark.e2e, pytest.mark.cli]


@pytest.fixture
def codex_price(openai_provider):
    from billing.models import Price

    Price.objects.filter(model_pattern="gpt-5.5*").delete()
    Price.objects.create(
        model_pattern="gpt-5.5*", provider_kind="openai", input_per_mtok=Decimal(5),
        output_per_mtok=Decimal(30), cache_read_per_mtok=Decimal("0.5"),
    )  # fmt: skip


@pytest.fixture
def person(django_user_model):
    return django_user_model.objects.create_user("dev", "dev@example.com", "pw-dev-123")


@pytest.fixture(autouse=True)
def fast_polls(settings):
    settings.LLMPROXY_DEVICE_POLL_SECONDS = 1


def codex(gateway, tmp_path, sink, prompt="say hi"):
    """codex exec whose auth command is ``llmproxy token``, each run of it counted."""
    count = tmp_path / "token-runs"
    command = ["/bin/sh", "-c", f'echo run >> "{count}"; exec "{COMMAND}" token --gateway "$0"',
               gateway.url]  # fmt: skip
    env = {key: value for key, value in cli_env(tmp_path).items() if key == "XDG_CONFIG_HOME"}
    run = run_codex(gateway.url, prompt, home=tmp_path, sink=sink, auth_command=command, env=env)
    runs = len(count.read_text().splitlines()) if count.exists() else 0
    return run, runs


def test_codex_runs_through_the_gateway_with_the_token_command(
    gateway,
    fake,
    openai_provider,
    codex_price,
    person,
    tmp_path,
    sink,
    recorded,
):
    assert login(gateway.url, tmp_path).returncode == 0
    fake.enqueue(fo.response("Hello from the fake.", input_tokens=900, output_tokens=7))
    run, runs = codex(gateway, tmp_path, sink)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Hello from the fake." in agent_text(run)
    assert runs >= 1
    (event,) = recorded(1)
    assert event.person_id == person.pk and event.credential == "cli"
    assert event.client == "codex"


def test_a_revoked_sign_in_makes_codex_rerun_the_command_which_says_to_log_in(
    gateway,
    fake,
    openai_provider,
    codex_price,
    person,
    tmp_path,
    sink,
):
    assert login(gateway.url, tmp_path).returncode == 0
    signin.revoke_person(person, reason="admin")  # after sign-in, before Codex starts
    run, runs = codex(gateway, tmp_path, sink)
    assert run.returncode != 0
    assert runs >= 2, "Codex did not ask the command again after the 401"
    output = run.stdout + run.stderr
    assert f"llmproxy login --gateway {gateway.url}" in output, output[-3000:]
    assert [r for r in fake.requests if r.method == "POST"] == []
