"""Deploys that drop nothing: ``llmproxy serve`` drains on SIGTERM.

A real gateway process (embedded mode in a scratch data dir) in front of the fake provider:
slow streams are in flight when the signal arrives; they all finish, new calls are refused
with a clean 503 (one worker) or served by the other worker (a rolling restart of two),
a Codex-style websocket is closed with 1001 and its next turn succeeds on a new socket, and
every call that was answered has exactly one usage event.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from tests.fakes import fake_openai as fo

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
MODEL = "claude-haiku-4-5"  # priced by the shipped price list
OPENAI_MODEL = "gpt-5-codex"


def held_body(events: int, interval: float) -> dict:
    return {
        "model": MODEL,
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hold"}],
        "metadata": {"fake_hold": {"events": events, "interval": interval}},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gateway:
    """``python -m llmproxy serve`` in a scratch embedded install, with a key for both
    protocols."""

    def __init__(self, fake_url: str, tmp_path: Path, **variables: str) -> None:
        self.env = {
            "PATH": os.environ["PATH"], "DJANGO_DEBUG": "true", "LLMPROXY_ENV_FILE": "",
            "LLMPROXY_DATA_DIR": str(tmp_path), "LLMPROXY_RETRY_SECONDS": "0",
            "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true", **variables,  # the fake is on loopback
        }  # fmt: skip
        self.manage("migrate", "-v0")
        self.manage("addprovider", "fake", "--kind", "anthropic", "--base-url", fake_url,
                    "--api-key", "sk-drain", "--models", "claude-*")  # fmt: skip
        self.manage("addprovider", "fake-openai", "--kind", "openai", "--base-url", fake_url,
                    "--api-key", "sk-drain-openai", "--models", "gpt-*")  # fmt: skip
        self.secret = self.manage("createkey", "drain").splitlines()[-1]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, *options: str) -> None:
        self.log = open(self.env["LLMPROXY_DATA_DIR"] + "/serve.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llmproxy", "serve", "--port", str(self.port), *options],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)

    def output(self) -> str:
        return Path(self.env["LLMPROXY_DATA_DIR"], "serve.log").read_text()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None:
            self.log.close()

    def usage_count(self) -> int:
        code = "from billing.models import UsageEvent; print(UsageEvent.objects.count())"
        return int(self.manage("shell", "-v0", "-c", code).strip())

    def headers(self) -> dict:
        return {"x-api-key": self.secret, "anthropic-version": "2023-06-01"}


@pytest.fixture
def held(fake_server, tmp_path):
    """(fake, a gateway not started yet), the drain delay as the test asks."""
    fake = fake_server.fake
    fake.clear()
    fake.set_default(None)
    made = []

    def make(delay: float) -> tuple:
        gateway = Gateway(
            fake.url, tmp_path, LLMPROXY_DRAIN_GRACE_SECONDS="30",
            LLMPROXY_DRAIN_DELAY_SECONDS=str(delay),
        )  # fmt: skip
        made.append(gateway)
        return fake, gateway

    yield make
    for gateway in made:
        gateway.stop()
    fake.clear()


async def stream_one(client: httpx.AsyncClient, gateway: Gateway, started: asyncio.Event,
                     events: int, interval: float) -> bytes:  # fmt: skip
    """One held stream on its own connection: its whole body."""
    chunks = []
    async with client.stream(
        "POST", gateway.url + "/v1/messages", json=held_body(events, interval),
        headers={**gateway.headers(), "connection": "close"},
    ) as response:  # fmt: skip
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            started.set()
    return b"".join(chunks)


def complete(body: bytes, events: int) -> bool:
    return body.count(b"event: content_block_delta") == events and b"message_stop" in body


def test_sigterm_drains_one_worker(held):
    """One worker: readiness fails at once, new calls get a clean 503 while the open streams
    finish, then the process exits 0 with every answered call recorded once."""
    # The listener stays open 1.5 s after the signal, as for a load balancer watching /readyz.
    fake, gateway = held(1.5)
    gateway.start()
    events, interval = 30, 0.1  # 3 s each

    async def run() -> tuple[list[bytes], httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            flags = [asyncio.Event() for _ in range(5)]
            streams = [
                asyncio.ensure_future(stream_one(client, gateway, flag, events, interval))
                for flag in flags
            ]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 15)
            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(timeout=5) as fresh:
                ready = await fresh.get(gateway.url + "/readyz")
                refused = await fresh.post(
                    gateway.url + "/v1/messages", headers=gateway.headers(),
                    json={"model": MODEL, "max_tokens": 5,
                          "messages": [{"role": "user", "content": "late"}]},
                )  # fmt: skip
            return await asyncio.gather(*streams), ready, refused

    bodies, ready, refused = asyncio.run(run())
    assert ready.status_code == 503
    assert ready.json()["checks"]["draining"]["status"] == "draining"
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "api_error"
    assert "shutting down" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"
    assert refused.headers.get("x-should-retry") != "false"
    assert all(complete(body, events) for body in bodies), [len(b) for b in bodies]
    assert exited_cleanly(gateway)
    assert fake.disconnects == 0  # no upstream stream was cut
    assert gateway.usage_count() == 5


def test_rolling_restart_of_two_workers_loses_nothing(held):
    """Two workers, a rolling restart (SIGHUP: each worker replaced by a new one, the old one
    drained) under steady streaming: every stream completes, every new call is served (by
    whichever worker listens; one that reaches an old worker in the instant before its
    listener closes gets the clean 503, and its retry is served), the websocket is told to
    reconnect and its next turn works, and the ledger has one event per answered call."""
    fake, gateway = held(0)  # the old worker stops listening at once: the new one takes over
    fake.set_default(fo.response("Done.", input_tokens=20, output_tokens=3))
    gateway.start("--workers", "2")
    workers = set(children(gateway.process.pid))
    assert len(workers) == 2
    events, interval = 40, 0.1  # 4 s each

    refusals = []

    async def one_call(client: httpx.AsyncClient) -> int:
        """A new call, retried once as the SDKs do when it reached a worker in the instant
        between its SIGTERM and the closing of its listener (a clean 503 saying so)."""
        for _ in range(2):
            response = await client.post(
                gateway.url + "/v1/messages",
                headers={**gateway.headers(), "connection": "close"},
                json={"model": MODEL, "max_tokens": 5, "stream": True,
                      "messages": [{"role": "user", "content": "steady"}],
                      "metadata": {"fake_hold": {"events": 3, "interval": 0.05}}},
            )  # fmt: skip
            if response.status_code != 503:
                return response.status_code
            refusals.append(response)
        return response.status_code

    async def turn(ws) -> list[dict]:
        frame = {"type": "response.create", "model": OPENAI_MODEL, "store": False,
                 "input": [{"type": "message", "role": "user", "content": "hi"}]}  # fmt: skip
        await ws.send(orjson.dumps(frame).decode())
        got = []
        while not got or got[-1]["type"] not in ("response.completed", "error"):
            got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 20)))
        return got

    async def run():
        ws_url = f"ws://127.0.0.1:{gateway.port}/v1/responses"
        auth = {"Authorization": f"Bearer {gateway.secret}"}
        async with httpx.AsyncClient(timeout=60) as client:
            ws = await websockets.connect(ws_url, additional_headers=auth)
            first = await turn(ws)
            flags = [asyncio.Event() for _ in range(20)]
            streams = [
                asyncio.ensure_future(stream_one(client, gateway, flag, events, interval))
                for flag in flags
            ]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 20)
            os.kill(gateway.process.pid, signal.SIGHUP)
            statuses = []
            deadline = time.monotonic() + 90
            while set(children(gateway.process.pid)) & workers:  # old workers still there
                assert time.monotonic() < deadline, "the rolling restart did not finish"
                statuses.append(await one_call(client))
                await asyncio.sleep(0.1)
            # The old worker that held the socket closed it, saying why.
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            ws2 = await websockets.connect(ws_url, additional_headers=auth)
            second = await turn(ws2)
            await ws2.close()
            return first, await asyncio.gather(*streams), statuses, closed.value, second

    first, bodies, statuses, closed, second = asyncio.run(run())
    assert first[-1]["type"] == "response.completed"
    assert all(complete(body, events) for body in bodies), [len(b) for b in bodies]
    assert statuses and set(statuses) == {200}, statuses
    for refused in refusals:  # each one the draining worker's own clean answer
        assert refused.headers["retry-after"] == "1", refused.text
        assert "shutting down" in refused.json()["error"]["message"]
    assert closed.rcvd is not None and closed.rcvd.code == 1001, closed
    assert second[-1]["type"] == "response.completed", second
    assert not set(children(gateway.process.pid)) & workers
    assert fake.disconnects == 0
    gateway.process.send_signal(signal.SIGTERM)
    assert exited_cleanly(gateway)
    # 2 websocket turns + 20 held streams + the calls made during the restart.
    assert gateway.usage_count() == 2 + 20 + len(statuses)


def exited_cleanly(gateway: Gateway) -> bool:
    """The server finished its shutdown (uvicorn then re-raises the signal it caught, so a
    process manager sees the SIGTERM exit it expects)."""
    code = gateway.process.wait(40)
    output = gateway.output()
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete." in output, output
    assert "Traceback" not in output, output
    return True


def children(pid: int) -> list[int]:
    """The worker processes of a uvicorn supervisor (not multiprocessing's resource tracker)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    workers = []
    for child in map(int, found.stdout.split()):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except FileNotFoundError:
            pass  # exited meanwhile
    return workers
