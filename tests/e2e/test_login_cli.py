"""``llmproxy login`` / ``token`` / ``logout``, the installed command, run for real against a
gateway on loopback, with a scratch config directory and without any Django settings."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from accounts import signin
from accounts.models import SignInToken
from tests.e2e.browser_step import Browser
from tests.fakes import MODEL
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e

COMMAND = Path(sys.executable).with_name("llmproxy")
MESSAGE = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def cli_env(home: Path) -> dict[str, str]:
    """A developer's terminal: no Django settings, no database, nothing of the gateway's."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "NO_PROXY": "127.0.0.1,localhost",
    }


@pytest.fixture
def person(django_user_model):
    return django_user_model.objects.create_user("dev", "dev@example.com", "pw-dev-123")


@pytest.fixture
def fast_polls(settings):
    settings.LLMPROXY_DEVICE_POLL_SECONDS = 1


def login(gateway_url: str, home: Path, approve: str = "approve") -> subprocess.CompletedProcess:
    """Run ``llmproxy login``; approve (or deny) the code it prints on the /device page."""
    process = subprocess.Popen(
        [str(COMMAND), "login", "--gateway", gateway_url], env=cli_env(home),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    code_seen = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if re.search(r"code [A-Z]{4}-[A-Z]{4}", line):
                code_seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert code_seen.wait(30), "".join(lines)
    user_code = re.search(r"code ([A-Z]{4}-[A-Z]{4})", "".join(lines)).group(1)
    browser = Browser(gateway_url)
    browser.sign_in("dev", "pw-dev-123")
    assert browser.decide(user_code, approve).status_code == 200
    process.wait(timeout=60)
    reader.join(timeout=5)
    stdout = process.stdout.read()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(lines))


def token(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(COMMAND), "token", *args], env=cli_env(home), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def credentials(home: Path) -> Path:
    return home / ".config" / "llmproxy" / "credentials.json"


def test_login_stores_private_credentials_and_token_prints_a_working_access_token(
    gateway, fake, provider, person, fast_polls, tmp_path, recorded
):
    fake.set_default(fu.text("ok", input_tokens=10, output_tokens=2))
    done = login(gateway.url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Signed in to" in done.stderr and "dev@example.com" in done.stderr
    path = credentials(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    printed = token(tmp_path)
    assert printed.returncode == 0, printed.stderr
    access = printed.stdout.strip()
    assert access.startswith("llmpa-") and printed.stdout == access + "\n"
    assert SignInToken.objects.get(kind="access", revoked_at__isnull=True).client == "cli"
    bearer = {"authorization": f"Bearer {access}"}
    assert httpx.post(gateway.url + "/v1/messages", json=MESSAGE, headers=bearer).status_code == 200
    (event,) = recorded(1)
    assert event.person_id == person.pk and event.credential == "cli"

    # Asked again (as Codex does on a schedule), the token is checked and still the same.
    assert token(tmp_path, "--gateway", gateway.url).stdout.strip() == access


def test_token_refreshes_an_expiring_token_and_rotation_revokes_the_old_one(
    gateway, provider, person, fast_polls, tmp_path
):
    assert login(gateway.url, tmp_path).returncode == 0
    first = token(tmp_path).stdout.strip()
    path = credentials(tmp_path)
    data = json.loads(path.read_text())
    data["gateways"][gateway.url]["expires_at"] = time.time() + 60  # under five minutes left
    path.write_text(json.dumps(data))
    second = token(tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() != first
    assert signin.find(first, SignInToken.ACCESS).revoked_at is not None
    assert signin.find(second.stdout.strip(), SignInToken.ACCESS).is_live


def test_a_revoked_sign_in_exits_non_zero_and_says_to_log_in(
    gateway, provider, person, fast_polls, tmp_path
):
    assert login(gateway.url, tmp_path).returncode == 0
    assert token(tmp_path).returncode == 0
    signin.revoke_person(person, reason="admin")
    refused = token(tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"llmproxy login --gateway {gateway.url}" in refused.stderr
    again = token(tmp_path)  # and it stays signed out
    assert again.returncode == 1 and "llmproxy login" in again.stderr


def test_logout_revokes_both_tokens(gateway, provider, person, fast_polls, tmp_path):
    assert login(gateway.url, tmp_path).returncode == 0
    access = token(tmp_path).stdout.strip()
    out = subprocess.run(
        [str(COMMAND), "logout"], env=cli_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert not SignInToken.objects.filter(revoked_at__isnull=True).exists()
    bearer = {"authorization": f"Bearer {access}"}
    assert httpx.post(gateway.url + "/v1/messages", json=MESSAGE, headers=bearer).status_code == 401
    signed_out = token(tmp_path)
    assert signed_out.returncode == 1 and "llmproxy login" in signed_out.stderr


def test_a_denied_login_fails(gateway, provider, person, fast_polls, tmp_path):
    done = login(gateway.url, tmp_path, approve="deny")
    assert done.returncode == 1 and "denied" in done.stderr
    assert (
        not credentials(tmp_path).exists()
        or json.loads(credentials(tmp_path).read_text())["gateways"] == {}
    )


def test_plain_http_to_another_host_is_refused(tmp_path):
    refused = subprocess.run(
        [str(COMMAND), "login", "--gateway", "http://gw.example.com"], env=cli_env(tmp_path),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2 and "https" in refused.stderr
