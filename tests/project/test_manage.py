"""Management commands that ops scripts rely on: output shape, idempotency, one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts import services as key_services
from accounts.models import ApiKey, Team
from billing.models import Price
from llmproxy.gateway.models import ModelRoute, Provider

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_createkey_prints_the_secret_alone_on_the_last_line(alice):
    Team.objects.create(name="platform")
    output = run(
        "createkey",
        "ci bot",
        "--owner",
        "alice",
        "--team",
        "platform",
        "--models",
        "claude-*,gpt-5*",
        "--tools",
        "web_search*",
        "--budget",
        "12.5",
        "--period",
        "week",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--max-concurrent",
        "4",
        "--expires",
        "2099-01-01T00:00:00",
    )
    secret = output.rstrip("\n").splitlines()[-1]
    key = key_services.find_key(secret)
    assert key is not None and key.name == "ci bot"
    assert key.owner == alice and key.team.name == "platform"
    assert key.allowed_models == ["claude-*", "gpt-5*"]
    assert key.allowed_tools == ["web_search*"]
    assert str(key.budget_usd) == "12.5000" and key.budget_period == "week"
    assert (key.rpm, key.tpm, key.max_concurrent) == (60, 100000, 4)
    assert key.expires_at.year == 2099 and key.expires_at.tzinfo is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--owner", "nobody"], "no user named"),
        (["--team", "ghosts"], "no team named"),
        (["--budget", "lots"], "must be a number"),
        (["--budget", "-1"], "zero or more"),
        (["--rpm", "0"], "positive integer"),
        (["--expires", "tomorrow"], "ISO 8601"),
        (["--expires", "2001-01-01"], "in the past"),
        (["--models", "a,,b"], "without empty items"),
    ],
)
def test_createkey_rejects_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        run("createkey", "bad", *args)
    assert not ApiKey.objects.exists()


def test_addprovider_creates_then_updates_with_routes():
    output = run(
        "addprovider",
        "anthropic",
        "--kind",
        "anthropic",
        "--base-url",
        "https://api.anthropic.com/",
        "--api-key",
        "sk-ant-1",
        "--models",
        "claude-*",
    )
    assert output.startswith("Created provider anthropic")
    assert "sk-ant-1" not in output
    provider = Provider.objects.get(name="anthropic")
    assert provider.base_url == "https://api.anthropic.com"
    assert provider.credential == "sk-ant-1"
    assert list(ModelRoute.objects.values_list("pattern", flat=True)) == ["claude-*"]

    output = run(
        "addprovider",
        "anthropic",
        "--kind",
        "anthropic",
        "--base-url",
        "https://gw.internal",
        "--api-key",
        "sk-ant-2",
        "--models",
        "claude-*,opus",
    )
    assert output.startswith("Updated provider anthropic")
    provider.refresh_from_db()
    assert provider.credential == "sk-ant-2" and provider.base_url == "https://gw.internal"
    assert ModelRoute.objects.count() == 2


def test_addprovider_reads_the_key_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-env")
    run(
        "addprovider",
        "oa",
        "--kind",
        "openai",
        "--base-url",
        "https://api.openai.com",
        "--api-key-env",
        "UPSTREAM_KEY",
    )
    assert Provider.objects.get(name="oa").credential == "sk-from-env"
    with pytest.raises(CommandError, match="MISSING_VAR is empty or unset"):
        run(
            "addprovider",
            "oa",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
            "--api-key-env",
            "MISSING_VAR",
        )


def test_addprovider_marks_an_openai_provider_as_serving_websockets():
    common = ["--base-url", "https://api.openai.com", "--api-key", "sk-1"]
    run("addprovider", "oa", "--kind", "openai", "--websockets", *common)
    assert Provider.objects.get(name="oa").websockets is True
    run("addprovider", "oa", "--kind", "openai", *common)  # not given: left as it was
    assert Provider.objects.get(name="oa").websockets is True
    run("addprovider", "oa", "--kind", "openai", "--no-websockets", *common)
    assert Provider.objects.get(name="oa").websockets is False
    with pytest.raises(CommandError, match="only an openai provider"):
        run("addprovider", "an", "--kind", "anthropic", "--websockets", *common)


def test_addprovider_rejects_a_bad_url():
    with pytest.raises(CommandError, match="must be an https"):
        run("addprovider", "x", "--kind", "openai", "--base-url", "ftp://x", "--api-key", "k")
    with pytest.raises(CommandError, match="invalid choice"):
        run("addprovider", "x", "--kind", "gemini", "--base-url", "https://x", "--api-key", "k")


def test_bootstrap_is_idempotent_and_shows_the_password_once():
    first = run("bootstrap", "--url", "http://127.0.0.1:9999")
    assert "Admin: http://127.0.0.1:9999/admin/" in first
    login = next(line for line in first.splitlines() if line.startswith("Login: "))
    username, password = login.removeprefix("Login: ").split("  ")[0].split(" / ")
    user = get_user_model().objects.get(username=username)
    assert user.is_superuser and user.check_password(password)
    assert Price.objects.exists()

    second = run("bootstrap")
    assert password not in second and "Login:" not in second
    assert get_user_model().objects.count() == 1


def test_loadprices_refreshes_every_shipped_row_from_a_file(tmp_path):
    shipped = json.loads((ROOT / "billing" / "prices.json").read_text())["prices"]
    # migrate added the shipped rows; an admin edited one and deleted another since
    Price.objects.filter(model_pattern="claude-haiku-4-5*").update(input_per_mtok=42)
    Price.objects.filter(model_pattern="gpt-5*").delete()
    output = run("loadprices")
    assert f"Prices: 1 created, {len(shipped) - 1} updated" in output
    assert str(Price.objects.get(model_pattern="claude-haiku-4-5*").input_per_mtok) == "1.000000"
    custom = tmp_path / "p.json"
    custom.write_text(
        '{"prices": [{"model_pattern": "claude-haiku-4-5*", "provider_kind": "anthropic", '
        '"input_per_mtok": "9", "output_per_mtok": "99"}]}'
    )
    assert "0 created, 1 updated" in run("loadprices", "--file", str(custom))
    assert str(Price.objects.get(model_pattern="claude-haiku-4-5*").input_per_mtok) == "9.000000"
    custom.write_text('{"prices": [{"model_pattern": "x"}]}')
    with pytest.raises(CommandError, match="missing input_per_mtok"):
        run("loadprices", "--file", str(custom))


def _manage(*args: str, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ["PATH"],
        "DJANGO_DEBUG": "true",
        "LLMPROXY_DATA_DIR": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["createkey", "x", "--rpm", "many"],
        ["createkey", "x", "--period", "year"],
        ["createkey", "x", "--owner", "nobody"],
        ["addprovider", "p", "--kind", "openai"],
        ["addprovider", "p", "--kind", "openai", "--base-url", "nope", "--api-key", "k"],
        ["createtoken"],
        ["createtoken", "nobody"],
        ["createtoken", "nobody", "--name", " "],
        ["createtoken", "nobody", "--name", "x" * 101],
    ],
)
def test_bad_arguments_give_one_line_and_a_non_zero_exit(tmp_path, args):
    assert _manage("migrate", "-v0", tmp_path=tmp_path).returncode == 0
    result = _manage(*args, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0].lower()


def test_createkey_in_a_fresh_process_prints_a_working_secret(tmp_path):
    assert _manage("migrate", "-v0", tmp_path=tmp_path).returncode == 0
    result = _manage("createkey", "script", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    assert result.stdout.splitlines()[-1].startswith("llmp-")


def test_createtoken_prints_a_working_api_token_alone_on_the_last_line(tmp_path):
    assert _manage("migrate", "-v0", tmp_path=tmp_path).returncode == 0
    made = _manage(
        "shell", "-c",
        "from django.contrib.auth.models import User; User.objects.create_user('alice'); "
        "User.objects.create_user('gone', is_active=False)",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = _manage("createtoken", "alice", "--name", "ci", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    secret = result.stdout.splitlines()[-1]
    assert secret.startswith("llmpt-") and " " not in secret
    assert "Created API token 'ci' for alice" in result.stdout
    assert _manage("createtoken", "alice", tmp_path=tmp_path).returncode == 0  # name: cli
    # the token authenticates as alice on the management API
    probe = _manage(
        "shell", "-c",
        "import sys; from django.test import Client; "
        "token = sys.stdin.readline().strip(); "
        "me = Client().get('/api/tokens/', headers={'authorization': 'Bearer ' + token}, "
        "HTTP_HOST='localhost'); print(me.status_code, sorted(t['name'] for t in me.json()))",
        tmp_path=tmp_path, stdin=secret + "\n",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[-1] == "200 ['ci', 'cli']"
    inactive = _manage("createtoken", "gone", tmp_path=tmp_path)
    assert inactive.returncode != 0
    assert inactive.stderr.strip().splitlines() == [
        "CommandError: user 'gone' is inactive: the API would refuse its token"
    ]


def test_migrations_are_complete():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_readme_commands_work_after_make_runs_setup_without_debug_in_the_environment(tmp_path):
    """`make run` writes local.env into the data directory; later commands need no variables."""

    def plain(*command: str, stdin: str = "") -> subprocess.CompletedProcess:
        # only what a fresh shell in the checkout has: no DJANGO_DEBUG, no secret
        return subprocess.run(
            command,
            cwd=ROOT,
            env={"PATH": os.environ["PATH"], "LLMPROXY_DATA_DIR": str(tmp_path)},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # make run's steps before it starts uvicorn
    assert plain(sys.executable, "-m", "llmproxy.localenv", "DJANGO_DEBUG=true").returncode == 0
    boot = plain(sys.executable, "manage.py", "bootstrap", "--url", "http://127.0.0.1:8001")
    assert boot.returncode == 0, boot.stderr
    # then the README's commands
    provider = plain(
        sys.executable, "manage.py", "addprovider", "anthropic", "--kind", "anthropic",
        "--base-url", "https://api.anthropic.com", "--api-key", "sk-ant-test",
    )  # fmt: skip
    assert provider.returncode == 0, provider.stderr
    created = plain(
        sys.executable, "manage.py", "createkey", "alice laptop", "--budget", "50",
        "--period", "month",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = created.stdout.splitlines()[-1]
    assert secret.startswith("llmp-")
    token = plain(sys.executable, "manage.py", "createtoken", "admin", "--name", "scripts")
    assert token.returncode == 0, token.stderr
    assert token.stdout.splitlines()[-1].startswith("llmpt-")
    # the key's digest matches under the settings every process started here gets
    found = plain(
        sys.executable, "manage.py", "shell", "-c",
        "import sys; from accounts.services import find_key; "
        "key = find_key(sys.stdin.readline().strip()); print(key and key.name)",
        stdin=secret + "\n",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[-1] == "alice laptop"


def test_createkey_refuses_another_digest_secret_until_resetkeysecret(tmp_path):
    def manage(*args: str, **variables: str) -> subprocess.CompletedProcess:
        environment = {
            "PATH": os.environ["PATH"],
            "DJANGO_DEBUG": "true",  # the gateway's secret: generated into the data directory
            "LLMPROXY_DATA_DIR": str(tmp_path),
            **variables,
        }
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def one_line_error(result: subprocess.CompletedProcess) -> str:
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    assert manage("migrate", "-v0").returncode == 0
    first = manage("createkey", "made with the gateway's secret")
    assert first.returncode == 0, first.stderr
    for variable in ("LLMPROXY_KEY_HMAC_SECRET", "DJANGO_SECRET_KEY"):
        refused = one_line_error(manage("createkey", "trap", **{variable: "another-secret"}))
        assert refused.startswith("CommandError: LLMPROXY_KEY_HMAC_SECRET (by default")
        assert "manage.py resetkeysecret --yes" in refused
    user = "from django.contrib.auth.models import User; User.objects.create_user('ci')"
    assert manage("shell", "-c", user).returncode == 0
    refused = one_line_error(manage("createtoken", "ci", LLMPROXY_KEY_HMAC_SECRET="another"))
    assert refused.startswith("CommandError: LLMPROXY_KEY_HMAC_SECRET (by default")
    assert "refusing without --yes" in one_line_error(
        manage("resetkeysecret", LLMPROXY_KEY_HMAC_SECRET="another-secret")
    )
    reset = manage("resetkeysecret", "--yes", LLMPROXY_KEY_HMAC_SECRET="another-secret")
    assert reset.returncode == 0, reset.stderr
    assert "Every key and API token made with the old secret stopped working" in reset.stdout
    assert "(1 key(s), 0 token(s)" in reset.stdout
    assert manage("createtoken", "ci", LLMPROXY_KEY_HMAC_SECRET="another-secret").returncode == 0
    again = manage("createkey", "new", LLMPROXY_KEY_HMAC_SECRET="another-secret")
    assert again.returncode == 0, again.stderr
    # and now the old secret is the foreign one
    assert "resetkeysecret" in one_line_error(manage("createkey", "old secret again"))
