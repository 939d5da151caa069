"""A fake LLM provider: a real HTTP server on loopback speaking Anthropic's Messages API.

Tests and bench/ point a Provider at it. Each request takes the next scripted ``Reply`` from
a queue (or the default answer), and every request is recorded with its headers and body so
tests can check what the gateway forwarded.

    python -m tests.fakes.fake_provider --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.fake_openai import OpenAIReply, OpenAIRoutes

_ids = itertools.count(1)


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None


@dataclass
class Reply:
    """One scripted answer. Build it with the helpers below."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # For a 200 message: the content blocks and usage; the request's "stream" decides the form.
    blocks: list[dict] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = "end_turn"
    chunks: int = 3
    delay: float = 0.0
    error: dict | None = None  # a whole-response error body (status != 200)
    json_body: dict | None = None  # a literal JSON answer (count_tokens, models)
    stream_error_after: int | None = None  # send an SSE error event after N events
    stream_error_type: str = "overloaded_error"
    hang_after: int | None = None  # stream N events, then stall until the client leaves
    drop_after: int | None = None  # stream N events, then cut the connection
    end_after: int | None = None  # stream N events, then end the stream cleanly
    head_delay: float = 0.0  # wait this long before the status line
    body_pieces: int = 1  # a non-stream body written in this many pieces, ``delay`` apart


def _usage(input_tokens, output_tokens, cache_read, cache_write_5m, cache_write_1h, **tools):
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_write_5m + cache_write_1h,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_write_5m,
            "ephemeral_1h_input_tokens": cache_write_1h,
        },
    }
    server_tools = {f"{name}_requests": n for name, n in tools.items() if n}
    if server_tools:
        usage["server_tool_use"] = server_tools
    return usage


def text(
    text: str = "Hello from the fake provider.",
    *,
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read: int = 0,
    cache_write_5m: int = 0,
    cache_write_1h: int = 0,
    web_search_requests: int = 0,
    web_fetch_requests: int = 0,
    chunks: int = 3,
    delay: float = 0.0,
    headers: dict[str, str] | None = None,
) -> Reply:
    usage = _usage(
        input_tokens, output_tokens, cache_read, cache_write_5m, cache_write_1h,
        web_search=web_search_requests, web_fetch=web_fetch_requests,
    )  # fmt: skip
    return Reply(
        headers=headers or {},
        blocks=[{"type": "text", "text": text}],
        usage=usage,
        chunks=chunks,
        delay=delay,
    )


def tool_use(
    name: str = "Bash",
    input: dict | None = None,
    *,
    text: str | None = "I'll run a command.",
    thinking: str | None = None,
    input_tokens: int = 10,
    output_tokens: int = 20,
    delay: float = 0.0,
) -> Reply:
    blocks: list[dict] = []
    if thinking:
        blocks.append({"type": "thinking", "thinking": thinking, "signature": "sig-" + "a" * 40})
    if text:
        blocks.append({"type": "text", "text": text})
    blocks.append(
        {
            "type": "tool_use",
            "id": f"toolu_{uuid.uuid4().hex[:24]}",
            "name": name,
            "input": input if input is not None else {"command": "echo hi"},
        }
    )
    return Reply(
        blocks=blocks,
        usage=_usage(input_tokens, output_tokens, 0, 0, 0),
        stop_reason="tool_use",
        delay=delay,
    )


def error(status: int, type: str, message: str, headers: dict | None = None) -> Reply:
    body = {"type": "error", "error": {"type": type, "message": message}}
    return Reply(status=status, error=body, headers=headers or {})


def midstream_error(after_events: int = 3, type: str = "overloaded_error") -> Reply:
    reply = text("this answer will break", chunks=4)
    reply.stream_error_after = after_events
    reply.stream_error_type = type
    return reply


def hang_after(events: int = 2, input_tokens: int = 10) -> Reply:
    reply = text("never finished", input_tokens=input_tokens, chunks=4)
    reply.hang_after = events
    return reply


def drop_after(events: int = 2, input_tokens: int = 10) -> Reply:
    reply = text("cut off", input_tokens=input_tokens, chunks=4)
    reply.drop_after = events
    return reply


def count_tokens(input_tokens: int = 42) -> Reply:
    return Reply(json_body={"input_tokens": input_tokens})


OPENAI_MODELS = ["gpt-test-5", "gpt-test-mini", "gpt-5.5"]
MODELS = ["claude-test-4-5", "claude-test-mini", "claude-opus-4-8", "claude-haiku-4-5-20251001"]


# --- rendering -------------------------------------------------------------------------------


def _message(reply: Reply, model: str) -> dict:
    return {
        "id": f"msg_{next(_ids):08d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": reply.blocks,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": reply.usage,
    }


def _pieces(value: str, chunks: int) -> list[str]:
    size = max(1, -(-len(value) // max(1, chunks)))
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _block_events(index: int, block: dict, chunks: int) -> list[tuple[str, dict]]:
    kind = block["type"]
    if kind == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], chunks)]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], 2)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:
        start = {**block, "input": {}}
        encoded = orjson.dumps(block["input"]).decode()
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(encoded, 3)]
    events = [("content_block_start", {"index": index, "content_block": start})]
    events += [("content_block_delta", {"index": index, "delta": d}) for d in deltas]
    events.append(("content_block_stop", {"index": index}))
    return events


def stream_events(reply: Reply, model: str) -> list[tuple[str, dict]]:
    message = {**_message(reply, model), "content": [], "stop_reason": None}
    message["usage"] = {**reply.usage, "output_tokens": 1}
    message["usage"].pop("server_tool_use", None)
    events: list[tuple[str, dict]] = [("message_start", {"message": message})]
    for index, block in enumerate(reply.blocks):
        events += _block_events(index, block, reply.chunks)
    final_usage = {"output_tokens": reply.usage.get("output_tokens", 0)}
    if "server_tool_use" in reply.usage:
        final_usage["server_tool_use"] = reply.usage["server_tool_use"]
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": None}
    events.append(("message_delta", {"delta": delta, "usage": final_usage}))
    events.append(("message_stop", {}))
    return events


def sse(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


# --- the server ------------------------------------------------------------------------------


class FakeProvider:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, default: Reply | None = None):
        self.host = host
        self.port = port
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._default = default
        self._runner: web.AppRunner | None = None
        self.openai = OpenAIRoutes(self)
        self.not_json = False  # the next request on any path is answered 200 with HTML
        # A body larger than this (bytes) is refused with 413, as a provider's front does.
        self.body_cap: int | None = None

    @property
    def ws_frames(self) -> list[dict]:
        return self.openai.ws_frames

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def enqueue(self, *replies: Reply | OpenAIReply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def set_default(self, reply: Reply | None) -> None:
        self._default = reply

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.disconnects = 0
            self.openai.ws_frames.clear()
            self.openai.websockets = True
            self.openai.ws_connections = 0
            self.openai.ws_one_response = False
            self.openai.default = None
            self.not_json = False
            self.body_cap = None

    def next_reply(self, fallback):
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self._default or fallback

    _next = next_reply

    @web.middleware
    async def _html(self, request: web.Request, handler):
        if not self.not_json or request.method != "POST":
            return await handler(request)
        self.not_json = False
        await self.record(request)
        return web.Response(text="<html>proxy error page</html>", content_type="text/html")

    @web.middleware
    async def _capped(self, request: web.Request, handler):
        cap = self.body_cap
        if cap is None or request.method != "POST" or len(await request.read()) <= cap:
            return await handler(request)
        await self.record(request)
        error = {
            "message": f"Request body too large (over {cap} bytes).",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
        return web.json_response({"error": error}, status=413, dumps=_dumps)  # fmt: skip

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=64 * 1024 * 1024, middlewares=[self._capped, self._html]
        )
        app.router.add_route("HEAD", "/{tail:.*}", self._head)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count)
        self.openai.add_to(app)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port 0 picked

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def record(self, request: web.Request) -> bytes:
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.requests.append(
            Recorded(request.method, request.path, request.query_string, headers, body)
        )
        return body

    async def _head(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        await self.record(request)
        if "x-api-key" in request.headers:
            data = [{"type": "model", "id": m, "display_name": m} for m in MODELS]
            return web.json_response({"data": data, "has_more": False}, dumps=_dumps)
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in OPENAI_MODELS]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def _count(self, request: web.Request) -> web.Response:
        await self.record(request)
        reply = self._next(count_tokens())
        return await self._answer(request, reply, {}, stream=False)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = {}
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        hold = metadata.get("fake_hold")
        if isinstance(hold, dict) and data.get("stream") is True:
            return await self._held(request, hold)
        reply = self._next(text())
        if isinstance(reply, OpenAIReply):  # a test queued the other protocol's answer
            reply = text()
        return await self._answer(request, reply, data, stream=data.get("stream") is True)

    async def _held(self, request: web.Request, hold: dict) -> web.StreamResponse:
        """A long, slow stream (bench/held.py): ``events`` text deltas ``interval`` seconds
        apart, each holding the time it was sent, so a client can tell the delay added on
        the way."""
        events, interval = int(hold.get("events", 100)), float(hold.get("interval", 0.1))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        message = {"id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant",
                   "model": "held", "content": [], "stop_reason": None,
                   "usage": {"input_tokens": 10, "output_tokens": 1}}  # fmt: skip
        await response.write(sse("message_start", {"message": message}))
        block = {"index": 0, "content_block": {"type": "text", "text": ""}}
        await response.write(sse("content_block_start", block))
        try:
            for _ in range(events):
                await asyncio.sleep(interval)
                delta = {"type": "text_delta", "text": f"{time.time():.6f};"}
                await response.write(sse("content_block_delta", {"index": 0, "delta": delta}))
            await response.write(sse("content_block_stop", {"index": 0}))
            usage = {"output_tokens": events}
            await response.write(sse("message_delta", {"delta": {"stop_reason": "end_turn"},
                                                       "usage": usage}))  # fmt: skip
            await response.write(sse("message_stop", {}))
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        await response.write_eof()
        return response

    async def _answer(self, request, reply: Reply, data: dict, stream: bool):
        headers = {"request-id": f"req_fake_{next(_ids):08d}", **reply.headers}
        if reply.error is not None:
            return web.Response(
                status=reply.status, body=orjson.dumps(reply.error), headers=headers,
                content_type="application/json",
            )  # fmt: skip
        if reply.head_delay:
            await asyncio.sleep(reply.head_delay)
        if reply.json_body is not None:
            if reply.drop_after is not None:
                return await self._cut_body(request, orjson.dumps(reply.json_body), headers)
            return web.Response(
                body=orjson.dumps(reply.json_body), headers=headers, content_type="application/json"
            )
        model = str(data.get("model", "claude-test-4-5"))
        if not stream and reply.body_pieces > 1:
            return await self._slow_body(request, orjson.dumps(_message(reply, model)), reply)
        if not stream:
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.drop_after is not None:  # announce the whole body, send half, hang up
                return await self._cut_body(request, orjson.dumps(_message(reply, model)), headers)
            return web.Response(
                body=orjson.dumps(_message(reply, model)), headers=headers,
                content_type="application/json",
            )  # fmt: skip
        return await self._stream(request, reply, model, headers)

    async def _stream(self, request, reply: Reply, model: str, headers: dict):
        response = web.StreamResponse(
            headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        try:
            for sent, (name, data) in enumerate(stream_events(reply, model)):
                if sent == reply.stream_error_after:
                    error = {"type": reply.stream_error_type, "message": "fake mid-stream failure"}
                    await response.write(sse("error", {"error": error}))
                    return response
                if sent == reply.hang_after:
                    await self._wait_for_client_to_leave(request)
                    return response
                if sent == reply.drop_after:
                    request.transport.close()
                    return response
                if sent == reply.end_after:
                    break
                if reply.delay and sent:
                    await asyncio.sleep(reply.delay)
                await response.write(sse(name, data))
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        await response.write_eof()
        return response

    async def _slow_body(self, request, body: bytes, reply: Reply):
        response = web.StreamResponse(headers={"content-type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        size = -(-len(body) // reply.body_pieces)
        try:
            for start in range(0, len(body), size):
                await response.write(body[start : start + size])
                await asyncio.sleep(reply.delay)
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return response

    async def _cut_body(self, request, body: bytes, headers: dict):
        response = web.StreamResponse(headers={**headers, "content-type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        request.transport.close()
        return response

    async def _wait_for_client_to_leave(self, request: web.Request) -> None:
        # aiohttp has no disconnect event to await: poll the transport.
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)
        self.disconnects += 1


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class FakeProviderThread:
    """The fake in its own event loop on a daemon thread (for sync tests and fixtures)."""

    def __init__(self, fake_class: type[FakeProvider] | None = None, **kwargs) -> None:
        self.fake = (fake_class or FakeProvider)(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.fake.url

    def __enter__(self) -> FakeProviderThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.fake_provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--chunks", type=int, default=3, help="text deltas per answer")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause between SSE events")
    args = parser.parse_args()
    default = text(chunks=args.chunks, delay=args.delay_ms / 1000)
    fake = FakeProvider(args.host, args.port, default=default)
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
