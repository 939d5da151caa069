"""The embedded default end to end: no DATABASE_URL, no REDIS_URL, one uvicorn process."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.fakes import fake_provider as fu

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_embedded_gateway_serves_prices_and_records(fake_server, tmp_path):
    fake = fake_server.fake
    fake.clear()
    fake.enqueue(fu.text("embedded hello", input_tokens=1000, output_tokens=100))
    env = {
        "PATH": os.environ["PATH"], "DJANGO_DEBUG": "true", "LLMPROXY_DATA_DIR": str(tmp_path),
        "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true",  # the fake provider is on loopback
    }  # fmt: skip

    def manage(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    port = free_port()
    assert f"Admin: http://127.0.0.1:{port}/admin/" in manage(
        "bootstrap", "--url", f"http://127.0.0.1:{port}"
    )
    manage("addprovider", "anthropic", "--kind", "anthropic", "--base-url", fake.url,
           "--api-key", "sk-embedded-upstream")  # fmt: skip
    secret = manage("createkey", "laptop", "--budget", "1").splitlines()[-1]
    server = subprocess.Popen(
        [sys.executable, "-m", "llmproxy", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the embedded gateway did not start"
                time.sleep(0.1)
        assert health.json()["mode"] == "embedded"
        client = anthropic.Anthropic(base_url=url, api_key=secret, max_retries=0)
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].text == "embedded hello"
        assert dict(fake.requests[-1].headers)["x-api-key"] == "sk-embedded-upstream"
        database = sqlite3.connect(tmp_path / "llmproxy.sqlite3")
        for _ in range(100):
            rows = database.execute(
                "select input_tokens, output_tokens, cost_usd from billing_usageevent"
            ).fetchall()
            if rows:
                break
            time.sleep(0.05)
        # claude-haiku-4-5 from the shipped price file: $1 in, $5 out per million tokens
        assert [(r[0], r[1], float(r[2])) for r in rows] == [(1000, 100, 0.0015)]
    finally:
        server.terminate()
        server.wait(10)
