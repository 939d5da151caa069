"""Real Claude Code's interactive ``/login`` against a gateway, driven in a pty (pexpect)
with the screen rendered by a terminal emulator (pyte), after the probe that recorded it
against Anthropic's reference gateway (tests/samples/claude_gateway/README.md).

Claude Code is pointed at the gateway as an IT team would do it, by ``forceLoginMethod:
gateway`` and ``forceLoginGatewayUrl`` (here in the scratch HOME's ``~/.claude/settings.json``,
which it reads when the machine has no managed-settings file). The browser's part is
``approve(user_code)``, called with the code the screen shows.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.clients import ProxySink, require_binary

COLUMNS, LINES = 140, 45
CODE = re.compile(r"Code:\s+([A-Z]{4}-[A-Z]{4})")


def prepare_home(home: Path, gateway_url: str) -> Path:
    """A scratch HOME whose Claude Code logs in to the gateway, with first-run screens done."""
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    claude = home / ".claude"
    claude.mkdir(parents=True, exist_ok=True)
    settings = {"forceLoginMethod": "gateway", "forceLoginGatewayUrl": gateway_url}
    (claude / "settings.json").write_text(json.dumps(settings))
    state = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "projects": {str(work): {"hasTrustDialogAccepted": True}},
    }
    (home / ".claude.json").write_text(json.dumps(state))
    return work


def environment(home: Path, sink: ProxySink) -> dict[str, str]:
    import os

    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "BROWSER": "/bin/true",
        "COLUMNS": str(COLUMNS),
        "LINES": str(LINES),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",  # the interactive client looks for updates otherwise
        "HTTPS_PROXY": sink.url,
        "HTTP_PROXY": sink.url,
        "https_proxy": sink.url,
        "http_proxy": sink.url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


class Screen:
    def __init__(self, child) -> None:
        import pyte

        self.child = child
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.seen: list[str] = []

    def pump(self, seconds: float) -> bool:
        import pexpect

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.2))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return False
        return True

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def snapshot(self) -> str:
        text = self.text
        if not self.seen or self.seen[-1] != text:
            self.seen.append(text)
        return text


def login(home: Path, sink: ProxySink, approve: Callable[[str], None], timeout: float = 150):
    """Run ``claude``, type /login, walk its screens, let ``approve`` do the browser's part,
    and return the screens seen once it says it is connected."""
    pexpect = pytest.importorskip("pexpect")
    pytest.importorskip("pyte")
    binary = require_binary("claude")
    work = home / "work"
    child = pexpect.spawn(
        str(binary), [], env=environment(home, sink), cwd=str(work), dimensions=(LINES, COLUMNS)
    )
    screen = Screen(child)
    done: set[str] = set()
    try:
        _wait(screen, r"for shortcuts|Try \"|run /login|shift\+tab|\u276f", 60)
        child.send("/login")
        screen.pump(0.8)
        child.send("\r")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not screen.pump(1.0):
                break
            text = screen.snapshot()
            if "Connected to Cloud gateway" in text:
                child.send("\r")
                screen.pump(2)
                screen.snapshot()
                return screen.seen
            found = CODE.search(text)
            if found and "code" not in done:
                done.add("code")
                approve(found.group(1))
            elif "Trust gateway" in text and "trust" not in done:
                done.add("trust")
                child.send("\x1b[A")  # up to "Yes, trust this gateway"
                screen.pump(0.4)
                child.send("\r")
            elif "Yes, continue" in text and "continue" not in done:
                done.add("continue")  # "Signed in to Cloud gateway as <email>": it is ours
                child.send("\x1b[A")
                screen.pump(0.4)
                child.send("\r")
            elif "Enter to connect" in text and "connect" not in done:
                done.add("connect")
                child.send("\r")
        pytest.fail("Claude Code's /login did not finish:\n\n" + "\n-----\n".join(screen.seen[-4:]))
    finally:
        with contextlib.suppress(Exception):
            child.sendcontrol("c")
            screen.pump(0.5)
            child.sendcontrol("c")
            screen.pump(1)
        child.terminate(force=True)


def _wait(screen: Screen, pattern: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not screen.pump(0.5):
            break
        if re.search(pattern, screen.snapshot()):
            return
    pytest.fail("Claude Code did not start:\n" + screen.text)


def credentials(home: Path) -> dict:
    return json.loads((home / ".claude" / ".credentials.json").read_text())
