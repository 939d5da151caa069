"""Shutdown loses no queued usage event (issue 10, finding 3), embedded mode end to end.

A real gateway process on SQLite answers calls while another connection holds the database's
write lock, so its usage stays queued; SIGTERM spools the queue to var/usage-spool; the next
start replays it. Every call the client was answered for is recorded exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_embedded import free_port
from tests.fakes import fake_provider as fu

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def serve(env: dict, port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "llmproxy", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return server
        except httpx.HTTPError:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)


def call(url: str, secret: str) -> str:
    response = httpx.post(
        url + "/v1/messages", headers={"x-api-key": secret}, timeout=30,
        json={"model": "claude-haiku-4-5", "max_tokens": 50,
              "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.headers["x-llmproxy-request-id"]


def recorded(path: Path) -> list[str]:
    with sqlite3.connect(path) as database:
        return [row[0] for row in database.execute("select request_id from billing_usageevent")]


def embedded_gateway(fake, tmp_path: Path, **settings: str) -> tuple[dict, int, str, str]:
    """An embedded gateway's data directory in ``tmp_path``, set up for the fake provider
    (answering every call): its environment, port, URL and a key's secret."""
    fake.clear()
    fake.set_default(fu.text("hello", input_tokens=100, output_tokens=10))
    env = {"PATH": os.environ["PATH"], "DJANGO_DEBUG": "true", "LLMPROXY_DATA_DIR": str(tmp_path),
           "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true",  # the fake is on loopback
           **settings}  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    manage(env, "bootstrap", "--url", url)
    manage(env, "addprovider", "anthropic", "--kind", "anthropic", "--base-url", fake.url,
           "--api-key", "sk-upstream")  # fmt: skip
    secret = manage(env, "createkey", "laptop").splitlines()[-1]
    return env, port, url, secret


def test_usage_queued_at_shutdown_is_spooled_and_replayed_at_the_next_start(fake_server, tmp_path):
    env, port, url, secret = embedded_gateway(
        fake_server.fake, tmp_path, LLMPROXY_USAGE_SHUTDOWN_SECONDS="1"
    )
    database = tmp_path / "llmproxy.sqlite3"
    log = tmp_path / "gateway.log"
    server = serve(env, port, log)
    blocker = sqlite3.connect(database, isolation_level=None)
    try:
        answered = [call(url, secret)]  # warms the key's policy while the database is free
        deadline = time.monotonic() + 10
        while answered[0] not in recorded(database):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        blocker.execute("BEGIN EXCLUSIVE")  # no other writer until it ends
        answered += [call(url, secret) for _ in range(12)]
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
        blocker.execute("ROLLBACK")
        blocker.close()
    assert recorded(database) == answered[:1]  # the twelve were still queued at SIGTERM
    spooled = sorted((tmp_path / "usage-spool").glob("*.jsonl"))
    assert spooled, log.read_text()[-3000:]
    server = serve(env, port, log)  # the next start replays the spool
    try:
        deadline = time.monotonic() + 20
        while len(recorded(database)) < len(answered):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(30)
    assert sorted(recorded(database)) == sorted(answered)
    assert list((tmp_path / "usage-spool").glob("*.jsonl")) == []
