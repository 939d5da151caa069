"""Limits at the edge: what a client, with or without a key, can make a worker hold.

Raw sockets against a real gateway on loopback (the in-process one, served as ``llmproxy
serve`` serves it, and for memory a gateway subprocess): the key is checked before the body
is read, request heads are bounded in size and time, bodies in time and in bytes in flight,
forwarded headers in size, and websocket upgrades and frames likewise.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async

from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu
from tests.gateway.test_openai_e2e import frames_until_done, ws_url
from tests.servers import serve_process

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
MESSAGE = orjson.dumps(
    {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return orjson.loads(self.body)


def open_socket(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 5.0) -> Response:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-answer"
        body += chunk
    return Response(int(status_line.split()[1]), headers, body[:length])


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Does the server close this connection within ``within`` seconds (EOF or reset)?"""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def send_until_cut(sock: socket.socket, chunk: bytes, most: int) -> int:
    """Send ``chunk`` over and over, up to ``most`` bytes; what was sent when the server
    stopped taking it (closed the connection)."""
    sent = 0
    sock.settimeout(10)
    try:
        while sent < most:
            sock.sendall(chunk)
            sent += len(chunk)
    except (ConnectionError, TimeoutError):
        pass
    return sent


# --- the key is checked before the body is read ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "credential", "shape"),
    [
        ("/v1/messages", {}, "anthropic"),
        ("/v1/messages", {"x-api-key": "llmp-not-a-key"}, "anthropic"),
        ("/v1/responses", {"authorization": "Bearer llmp-not-a-key"}, "openai"),
    ],
    ids=["no-key", "bad-key", "bad-bearer"],
)
def test_no_key_or_a_bad_key_is_401_before_the_body_is_read(
    gateway, fake, provider, settings, path, credential, shape
):
    settings.LLMPROXY_BODY_TIMEOUT_SECONDS = 1
    headers = {"content-type": "application/json", "content-length": str(30 * MIB), **credential}
    if shape == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    sock = open_socket(gateway.port)
    started = time.monotonic()
    # The head and 1 KiB of a declared 30 MiB: the answer must come without the rest.
    sock.sendall(head(path, headers) + b"x" * 1024)
    response = read_response(sock, timeout=5)
    assert time.monotonic() - started < 2
    assert response.status == 401
    assert response.headers["x-should-retry"] == "false"
    if shape == "anthropic":
        assert response.json()["error"]["type"] == "authentication_error"
    else:
        assert response.json()["error"]["code"] == "invalid_api_key"
    # The rest of the body never comes: the server closes the connection, cleanly (EOF),
    # once the body deadline passed.
    sock.settimeout(5)
    assert sock.recv(65536) == b""
    sock.close()
    assert fake.requests == []


def test_the_rest_of_a_body_answered_early_is_thrown_away_and_the_connection_goes_on(
    gateway, fake, provider
):
    sock = open_socket(gateway.port)
    length = 4 * MIB
    sock.sendall(head("/v1/messages", {"anthropic-version": "1", "content-length": str(length)}))
    sock.sendall(b"x" * 1024)
    response = read_response(sock)
    assert response.status == 401
    assert "connection" not in response.headers
    # The client goes on sending its body (as SDKs do): the server reads it and throws it
    # away, so the client gets to read its answer, and the connection serves a next request.
    sock.sendall(b"x" * (length - 1024))
    sock.sendall(head("/", {}, method="HEAD"))
    assert read_response(sock).status == 200
    sock.close()
    assert fake.requests == []


def test_a_body_trickled_after_an_early_answer_is_cut_off(gateway, provider, settings):
    settings.LLMPROXY_BODY_TIMEOUT_SECONDS = 1
    sock = open_socket(gateway.port)
    sock.sendall(head("/v1/messages", {"anthropic-version": "1", "content-length": str(MIB)}))
    assert read_response(sock).status == 401
    started = time.monotonic()
    try:
        while time.monotonic() - started < 5:
            sock.sendall(b"x" * 100)  # never idle long enough for the keep-alive timeout
            time.sleep(0.2)
    except ConnectionError:
        pass
    assert time.monotonic() - started < 3, "the server kept reading a body nobody uses"
    sock.close()


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upload_without_a_key(port: int, size: int) -> int:
    """POST a body of ``size`` bytes without a key, as a client that sends it all; the status."""
    sock = open_socket(port)
    sock.sendall(head("/v1/messages", {"anthropic-version": "1", "content-length": str(size)}))
    send_until_cut(sock, b"x" * MIB, size)
    try:
        return read_response(sock, timeout=30).status
    finally:
        sock.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_unauthenticated_uploads_do_not_grow_the_workers_memory(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_DEBUG": "true",
        "LLMPROXY_DATA_DIR": str(tmp_path),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True,
        timeout=120,
    )  # fmt: skip
    port = free_port()
    with serve_process(env, port) as server:
        assert upload_without_a_key(port, MIB) == 401  # warm: every import done
        before = vm_rss(server.pid)
        peak = before
        statuses: list[int] = []
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, vm_rss(server.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        uploads = [
            threading.Thread(target=lambda: statuses.append(upload_without_a_key(port, 30 * MIB)))
            for _ in range(10)
        ]
        for upload in uploads:
            upload.start()
        for upload in uploads:
            upload.join(60)
        done.set()
        sampler.join()
        after = vm_rss(server.pid)
        print(
            f"VmRSS before {before / MIB:.1f} MiB, peak {peak / MIB:.1f}, after {after / MIB:.1f}"
        )
        assert statuses == [401] * 10
        assert after - before < 20 * 1000 * 1000
        assert peak - before < 20 * 1000 * 1000


# --- request heads: size, count, time ---------------------------------------------------------


def test_an_endless_header_is_cut_off(gateway, fake, provider):
    sock = socket.socket()
    # A small send buffer: what was sent is then close to what the server took.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.connect(("127.0.0.1", gateway.port))
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nanthropic-version: 1\r\nx-junk: ")
    sent = send_until_cut(sock, b"a" * 65536, 16 * MIB)
    # Cut within about one read of the limit (64 KiB), not at the 16 MiB the client sent on.
    assert sent < MIB
    response = read_response(sock)
    assert response.status == 431
    assert response.json()["error"]["type"] == "request_too_large"
    assert closed_by_server(sock, within=2)
    sock.close()
    assert fake.requests == []


@pytest.mark.parametrize("size", [70 * 1024, 8 * MIB], ids=["70KiB", "8MiB"])
def test_a_header_over_the_size_limit_is_431_and_goes_nowhere(gateway, fake, make_key, size):
    secret = make_key()
    response = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": secret, "anthropic-beta": "b" * size},
        content=MESSAGE,
    )
    assert response.status_code == 431
    assert response.json()["error"]["type"] == "request_too_large"
    assert fake.requests == []


def test_too_many_headers_are_431(gateway, fake, make_openai_key):
    secret = make_openai_key()
    headers = {"authorization": f"Bearer {secret}", **{f"x-h{i}": "v" for i in range(150)}}
    response = httpx.post(
        gateway.url + "/v1/responses",
        headers=headers,
        json={"model": OPENAI_MODEL, "input": "hi"},
    )
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"
    assert "at most 100" in response.json()["error"]["message"]
    assert fake.requests == []


def test_a_head_that_stalls_is_closed_within_the_deadline(gateway, settings):
    settings.LLMPROXY_HEADER_TIMEOUT_SECONDS = 1
    sock = open_socket(gateway.port)
    started = time.monotonic()
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nanthropic-version: 1\r\nx-api-k")
    response = read_response(sock, timeout=5)
    assert response.status == 408
    assert response.json()["error"]["type"] == "timeout_error"
    assert closed_by_server(sock, within=2)
    assert time.monotonic() - started < 3
    sock.close()
    # A connection that sends nothing at all is closed too, without an answer.
    sock = open_socket(gateway.port)
    started = time.monotonic()
    sock.settimeout(5)
    assert sock.recv(100) == b""
    assert time.monotonic() - started < 3
    sock.close()


# --- bodies: a deadline and a cap on the bytes in flight -----------------------------------------


def test_a_half_sent_body_is_408_within_the_deadline(gateway, fake, make_key, settings):
    settings.LLMPROXY_BODY_TIMEOUT_SECONDS = 1
    secret = make_key()
    sock = open_socket(gateway.port)
    started = time.monotonic()
    sock.sendall(head("/v1/messages", {"x-api-key": secret, "content-length": "10000"}))
    sock.sendall(b"{" * 100)
    response = read_response(sock, timeout=5)
    assert response.status == 408
    assert 1 <= time.monotonic() - started < 2.5
    assert response.json()["error"]["type"] == "timeout_error"
    assert response.headers["connection"] == "close"
    assert closed_by_server(sock, within=2)
    sock.close()
    assert fake.requests == []
    from llmproxy.gateway import edge

    assert edge.in_flight.used == 0


def test_the_admin_and_the_api_have_the_body_deadline_too(gateway, settings):
    settings.LLMPROXY_BODY_TIMEOUT_SECONDS = 1
    sock = open_socket(gateway.port)
    sock.sendall(head("/admin/login/", {"content-length": "10000"}) + b"username=")
    response = read_response(sock, timeout=5)
    assert response.status == 408
    assert closed_by_server(sock, within=2)
    sock.close()


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_bodies_in_flight_are_capped_and_the_bytes_come_back(gateway, fake, make_key, settings):
    settings.LLMPROXY_MAX_BODY_BYTES = MIB
    settings.LLMPROXY_MAX_BODY_BYTES_IN_FLIGHT = 2 * MIB
    fake.set_default(fu.text("fine", input_tokens=3, output_tokens=1))
    secret = make_key()
    # Two slow uploads of 1 MiB each hold the whole cap.
    slow = []
    for _ in range(2):
        sock = open_socket(gateway.port)
        sock.sendall(head("/v1/messages", {"x-api-key": secret, "content-length": str(MIB)}))
        sock.sendall(b"{")
        slow.append(sock)
    time.sleep(0.3)
    started = time.monotonic()
    refused = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": secret}, content=MESSAGE
    )
    assert refused.status_code == 503
    assert 0.9 < time.monotonic() - started < 3  # it waited briefly for room first
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "overloaded_error"
    # A request that finds room within the wait goes through: one upload is abandoned.
    result: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: result.append(
            httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": secret}, content=MESSAGE)
        )
    )
    waiting.start()
    time.sleep(0.3)
    slow.pop().close()
    waiting.join(10)
    assert result[0].status_code == 200
    # The other one gives up too: every byte it held comes back.
    slow.pop().close()
    from llmproxy.gateway import edge

    wait_for(lambda: edge.in_flight.used == 0)
    response = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": secret}, content=MESSAGE
    )
    assert response.status_code == 200
    assert len(fake.requests) == 2


# --- forwarded headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"anthropic-beta": "b" * 10_000},
        {f"x-stainless-h{i}": "s" * 7_000 for i in range(5)},
    ],
    ids=["one-value", "all-together"],
)
def test_an_oversized_forwarded_header_is_431_and_never_forwarded(
    gateway, fake, make_key, recorded, extra
):
    secret = make_key()
    response = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": secret, **extra}, content=MESSAGE
    )
    assert response.status_code == 431
    assert response.json()["error"]["type"] == "request_too_large"
    assert "forward" in response.json()["error"]["message"]
    assert fake.requests == []
    assert recorded() == []


def test_an_oversized_forwarded_codex_header_is_431(gateway, fake, make_openai_key):
    secret = make_openai_key()
    response = httpx.post(
        gateway.url + "/v1/responses",
        headers={"authorization": f"Bearer {secret}", "x-codex-turn-metadata": "m" * 10_000},
        json={"model": OPENAI_MODEL, "input": "hi"},
    )
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"
    assert fake.requests == []


# --- the websocket ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {f"x-h{i}": "v" for i in range(150)},
        {"x-codex-turn-metadata": "m" * 10_000},
        {f"x-codex-h{i}": "m" * 7_000 for i in range(5)},
    ],
    ids=["too-many", "one-too-big", "forwarded-too-big"],
)
async def test_the_websocket_upgrade_has_the_same_header_limits(
    gateway, fake, make_openai_key, extra
):
    secret = await sync_to_async(make_openai_key)()
    headers = {"Authorization": f"Bearer {secret}", **extra}
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(ws_url(gateway), additional_headers=headers):
            pass
    assert refused.value.response.status_code == 431
    error = orjson.loads(refused.value.response.body)["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert fake.requests == []


async def test_a_frame_over_the_limit_gets_an_error_frame_and_the_socket_stays_usable(
    gateway, fake, make_openai_key, settings
):
    settings.LLMPROXY_MAX_FRAME_BYTES = 64 * 1024
    secret = await sync_to_async(make_openai_key)()
    fake.set_default(fo.response("fine", input_tokens=3, output_tokens=1))
    good = {"type": "response.create", "model": OPENAI_MODEL, "input": "x"}
    big = {**good, "instructions": "i" * 100_000}
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(orjson.dumps(big))
        (error,) = await frames_until_done(socket)
        assert error["type"] == "error"
        assert error["status"] == 413
        assert error["error"]["code"] == "request_too_large"
        await socket.send(orjson.dumps(good))
        assert (await frames_until_done(socket))[-1]["type"] == "response.completed"
    assert len(fake.requests) == 1


async def test_a_frame_the_server_will_not_read_closes_the_socket_with_1009(
    fake, make_openai_key, settings, transactional_db
):
    from llmproxy.asgi import application
    from tests.servers import ServerThread

    settings.LLMPROXY_MAX_FRAME_BYTES = MIB
    secret = await sync_to_async(make_openai_key)()
    with ServerThread(application, lifespan="off") as server:
        headers = {"Authorization": f"Bearer {secret}"}
        async with websockets.connect(ws_url(server), additional_headers=headers) as socket:
            frame = {"type": "response.create", "model": OPENAI_MODEL, "input": "x" * (2 * MIB)}
            await socket.send(orjson.dumps(frame))
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 10)
        assert socket.close_code == 1009
    assert fake.requests == []


async def test_a_body_read_cancelled_from_outside_stays_cancelled_and_gives_its_bytes_back():
    from llmproxy.gateway import edge

    never = asyncio.Event()

    async def receive():
        await never.wait()

    reading = asyncio.ensure_future(edge.read_body(receive, 1000))
    await asyncio.sleep(0.01)
    assert edge.in_flight.used == 1000
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert edge.in_flight.used == 0
