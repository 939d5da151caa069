"""``llmproxy serve`` writes a buffered response's head together with its body
(llmproxy/server.py, ``HeadWithBody``): one write, and still every response framed right."""

from __future__ import annotations

import asyncio
import socket

import httpx

from llmproxy.server import HeadWithBody
from tests.servers import ServerThread


class Recording:
    """What a transport was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def write(self, data) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, chunks) -> None:
        self.calls.append(("writelines", tuple(bytes(chunk) for chunk in chunks)))

    def close(self) -> None:
        self.calls.append(("close",))

    def is_closing(self) -> bool:
        return False


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def test_a_head_with_a_length_goes_out_with_the_first_body_write():
    recording = Recording()
    transport = HeadWithBody(recording)
    transport.write(HEAD)
    assert recording.calls == []
    transport.write(b"{}")
    transport.write(b"")  # a later write is its own
    assert recording.calls == [("writelines", (HEAD, b"{}")), ("write", b"")]
    assert not transport.is_closing()  # the rest is the transport's


def test_a_streamed_head_and_100_continue_go_out_at_once():
    recording = Recording()
    transport = HeadWithBody(recording)
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    transport.write(CHUNKED)
    transport.write(b"5\r\nhello\r\n")
    assert recording.calls == [
        ("write", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("write", CHUNKED),
        ("write", b"5\r\nhello\r\n"),
    ]
    recording = Recording()
    transport = HeadWithBody(recording)
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    transport.write(HEAD)  # the head after a 100 Continue is still held for its body
    transport.write(b"{}")
    assert recording.calls[1:] == [("writelines", (HEAD, b"{}"))]


def test_a_response_closed_or_flushed_before_its_body_still_sends_its_head():
    recording = Recording()
    transport = HeadWithBody(recording)
    transport.write(HEAD)
    transport.close()
    assert recording.calls == [("write", HEAD), ("close",)]
    recording = Recording()
    transport = HeadWithBody(recording)
    transport.write(HEAD)
    transport.flush()  # the response completed with no body write: a HEAD request's
    transport.flush()
    assert recording.calls == [("write", HEAD)]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        for part in (b"data: one\n\n", b"data: two\n\n"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b"echo:" + body
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": answer[:3], "more_body": True})
    await send({"type": "http.response.body", "body": answer[3:]})


def test_responses_of_every_kind_are_framed_right_on_one_connection():
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):  # keep-alive: each cycle has its own head to hold
            assert client.post("/echo", content=b"abc").content == b"echo:abc"
            assert client.head("/echo").headers["content-length"] == "5"
            assert client.get("/empty").status_code == 204
            streamed = client.get("/stream")
            assert streamed.text == "data: one\n\ndata: two\n\n"
            assert streamed.headers["transfer-encoding"] == "chunked"


def test_expect_100_continue_is_answered_before_the_body_is_sent():
    with (
        ServerThread(app) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
                     b"expect: 100-continue\r\n\r\n")  # fmt: skip
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"xyz")
        received = b""
        while not received.endswith(b"echo:xyz"):
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\ncontent-length: 8\r\n" in received
