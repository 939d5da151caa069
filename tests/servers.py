"""Real servers on loopback ports for end-to-end tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from llmproxy import server as llmproxy_server

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve_process(env: dict, port: int) -> Iterator[subprocess.Popen]:
    """``python -m llmproxy serve`` on 127.0.0.1:``port`` as a subprocess, yielded once it
    answers; terminated afterwards."""
    server = subprocess.Popen(
        [sys.executable, "-m", "llmproxy", "serve", "--port", str(port), "--log-level",
         "warning", "--no-access-log"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.head(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(10)


class CountingApp:
    """Wraps an ASGI app to record the HTTP requests and websockets that reached it."""

    def __init__(self, app) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        elif scope["type"] == "websocket":
            self.requests.append(("WEBSOCKET", scope["path"]))
        await self.app(scope, receive, send)


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a daemon thread of this process,
    configured as ``llmproxy serve`` configures it (the limits at the edge)."""

    def __init__(self, app, *, lifespan: str = "on") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = llmproxy_server.config(
            app, lifespan=lifespan, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()
