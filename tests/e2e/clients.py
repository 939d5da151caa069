"""Run the real Claude Code and Codex CLIs (installed by ``make clients``) against loopback.

Each run gets a scratch HOME and config directory, and its proxy variables point at a
``ProxySink`` that refuses every connection, so the CLIs' own calls to their vendors'
hosts (telemetry, updates) never leave the machine; NO_PROXY keeps 127.0.0.1 direct.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The pinned CLIs (make clients), or others: LLMPROXY_CLIENTS_DIR names an npm prefix whose
# node_modules/.bin holds claude and codex (make clients-latest installs the newest there).
CLIENTS = Path(os.environ.get("LLMPROXY_CLIENTS_DIR") or ROOT / "clients")
BIN = CLIENTS / "node_modules" / ".bin"


def require_binary(name: str) -> Path:
    path = BIN / name
    if path.exists():
        return path
    message = f"{path} is missing: run `make clients`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class ProxySink:
    """An HTTP proxy on 127.0.0.1 that answers every request or CONNECT with 403."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(4096).decode("latin-1").strip()
                sink.requests.append(line)
                self.wfile.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ProxySink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class ClientRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    events: list[dict] = field(default_factory=list)

    @property
    def result(self) -> dict:
        """Claude Code's --output-format json answer."""
        return json.loads(self.stdout)


def _environment(home: Path, sink: ProxySink, extra: dict[str, str]) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "HTTPS_PROXY": sink.url,
        "HTTP_PROXY": sink.url,
        "https_proxy": sink.url,
        "http_proxy": sink.url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        **extra,
    }


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> ClientRun:
    started = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{argv[0]} did not finish in {timeout} s:\n{stderr[-3000:]}")
    finally:
        # The CLIs may leave helpers behind: end the whole session group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return ClientRun(process.returncode, stdout, stderr, time.monotonic() - started)


def run_claude(
    base_url: str,
    prompt: str,
    *,
    home: Path,
    sink: ProxySink,
    api_key: str | None = None,
    auth_token: str | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> ClientRun:
    binary = require_binary("claude")
    extra = {
        "ANTHROPIC_BASE_URL": base_url,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CONFIG_DIR": str(home / ".claude-config"),
        **(env or {}),
    }
    if api_key is not None:
        extra["ANTHROPIC_API_KEY"] = api_key
    if auth_token is not None:
        extra["ANTHROPIC_AUTH_TOKEN"] = auth_token
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "-p", prompt, "--output-format", "json", *args]
    return _run(argv, _environment(home, sink, extra), work, timeout)


def run_codex(
    base_url: str,
    prompt: str,
    *,
    home: Path,
    sink: ProxySink,
    key: str = "",
    websockets: bool = False,
    config: dict[str, object] | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 120,
    auth_command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ClientRun:
    """``codex exec`` with the gateway as its provider; the key in LLMPROXY_API_KEY, or,
    with ``auth_command``, whatever that command prints ([model_providers.<id>.auth])."""
    binary = require_binary("codex")
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    lines = [
        'model = "gpt-5.5"',
        'model_provider = "llmproxy"',
        *(f"{name} = {json.dumps(value)}" for name, value in (config or {}).items()),
        "",
        "[model_providers.llmproxy]",
        'name = "llmproxy"',
        f'base_url = "{base if base.endswith("/v1") else base + "/v1"}"',
        'wire_api = "responses"',
        f"supports_websockets = {'true' if websockets else 'false'}",
    ]
    if auth_command is None:
        lines.append('env_key = "LLMPROXY_API_KEY"')
    else:
        lines += [
            "",
            "[model_providers.llmproxy.auth]",
            f"command = {json.dumps(auth_command[0])}",
            f"args = {json.dumps(auth_command[1:])}",
            "timeout_ms = 20000",
        ]
    (codex_home / "config.toml").write_text("\n".join(lines) + "\n")
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    extra = {"CODEX_HOME": str(codex_home), "LLMPROXY_API_KEY": key, **(env or {})}
    argv = [str(binary), "exec", "--skip-git-repo-check", "--json", *args, prompt]
    run = _run(argv, _environment(home, sink, extra), work, timeout)
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            run.events.append(json.loads(line))
    return run
