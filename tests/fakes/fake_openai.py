"""The OpenAI side of the fake provider: Responses (SSE, JSON, websocket) and Chat Completions.

``FakeProvider`` (fake_provider.py) mounts these routes beside the Anthropic ones, so one
fake serves both kinds of provider and shares its queue and its record of requests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclass
class OpenAIReply:
    """A scripted Responses or Chat Completions answer (or an OpenAI-shaped error)."""

    text: str = "Hello from the fake provider."
    items: list[dict] = field(default_factory=list)  # extra output items after the message
    usage: dict[str, int] = field(default_factory=dict)
    status: str = "completed"  # completed | incomplete | failed
    compaction: bool = False
    chunks: int = 3
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    error_status: int | None = None
    error: dict | None = None
    head_delay: float = 0.0  # wait this long before answering at all
    # Cut the answer off after N stream events (or half a non-stream body): "drop" closes the
    # connection, "end" ends the stream cleanly as if it were complete.
    cut_after: int | None = None
    cut: str = "drop"


def response(
    text: str = "Hello from the fake provider.",
    *,
    input_tokens: int = 10,
    cached_tokens: int = 0,
    output_tokens: int = 5,
    reasoning_tokens: int = 0,
    items: list[dict] | None = None,
    status: str = "completed",
    compaction: bool = False,
    chunks: int = 3,
    delay: float = 0.0,
    headers: dict[str, str] | None = None,
    head_delay: float = 0.0,
) -> OpenAIReply:
    usage = {
        "input_tokens": input_tokens,
        "cached_tokens": cached_tokens,
        "output_tokens": output_tokens,
        "reasoning_tokens": reasoning_tokens,
    }
    return OpenAIReply(
        text=text, items=items or [], usage=usage, status=status, compaction=compaction,
        chunks=chunks, delay=delay, headers=headers or {}, head_delay=head_delay,
    )  # fmt: skip


def function_call(
    name: str = "exec_command", arguments: str = '{"cmd": "echo hi"}', **usage: Any
) -> OpenAIReply:
    item = {
        "type": "function_call",
        "id": _id("fc"),
        "call_id": _id("call"),
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }
    reply = response("", items=[item], **usage)
    return reply


def chat(
    text: str = "Hello from the fake provider.",
    *,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cached_tokens: int = 0,
    chunks: int = 3,
    delay: float = 0.0,
    head_delay: float = 0.0,
) -> OpenAIReply:
    usage = {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
    }
    return OpenAIReply(text=text, usage=usage, chunks=chunks, delay=delay, head_delay=head_delay)


def openai_error(status: int, type: str, message: str, code: str | None = None, headers=None):
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return OpenAIReply(error_status=status, error=body, headers=headers or {})


# --- Responses rendering ---------------------------------------------------------------------


def _pieces(value: str, chunks: int) -> list[str]:
    size = max(1, -(-len(value) // max(1, chunks)))
    return [value[i : i + size] for i in range(0, len(value), size)]


def summary_of(data: dict | None) -> str:
    """A compaction's opaque content, naming the first and last item it summarised (a
    compaction item among them counts as the span it summarised), so a test can tell which
    part of a history each compaction covers."""
    items = data.get("input") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return "opaque-summary"
    trigger = "compaction_trigger"
    spans = [_span(i) for i in items if isinstance(i, dict) and i.get("type") != trigger]
    return f"opaque-summary:{spans[0][0]}..{spans[-1][1]}" if spans else "opaque-summary"


def _span(item: dict) -> tuple[str, str]:
    content = str(item.get("encrypted_content", ""))
    if item.get("type") == "compaction" and content.count("..") == 1:
        first, last = content.removeprefix("opaque-summary:").split("..")
        return first, last
    name = str(item.get("id") or item.get("call_id") or item.get("type"))
    return name, name


def output_items(reply: OpenAIReply, data: dict | None = None) -> list[dict]:
    if reply.compaction:
        content = summary_of(data)
        return [{"type": "compaction", "id": _id("cmp"), "encrypted_content": content}]
    items = []
    if reply.text:
        content = [{"type": "output_text", "text": reply.text, "annotations": []}]
        items.append(
            {"type": "message", "id": _id("msg"), "status": "completed", "role": "assistant",
             "content": content}
        )  # fmt: skip
    return items + reply.items


def response_object(reply: OpenAIReply, model: str, output: list[dict], status: str) -> dict:
    usage = reply.usage
    body: dict[str, Any] = {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "usage": None,
        "error": None,
        "incomplete_details": None,
    }
    if status != "in_progress":
        body["usage"] = {
            "input_tokens": usage.get("input_tokens", 0),
            "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
            "output_tokens": usage.get("output_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
            "total_tokens": usage.get("input_tokens", 0) + usage.get("output_tokens", 0),
        }
    if status == "failed":
        body["error"] = {"code": "server_error", "message": "fake failure"}
    if status == "incomplete":
        body["incomplete_details"] = {"reason": "max_output_tokens"}
    return body


def response_events(reply: OpenAIReply, model: str, data: dict | None = None) -> list[dict]:
    """The event sequence of a streamed response, as JSON objects (SSE data or WS frames)."""
    items = output_items(reply, data)
    started = response_object(reply, model, [], "in_progress")
    events = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(items):
        events += _item_events(index, item, reply.chunks)
    final = {**response_object(reply, model, items, reply.status), "id": started["id"]}
    events.append({"type": f"response.{reply.status}", "response": final})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def _item_events(index: int, item: dict, chunks: int) -> list[dict]:
    if item["type"] != "message":
        return [
            {"type": "response.output_item.added", "output_index": index, "item": item},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    text = item["content"][0]["text"]
    where = {"item_id": item["id"], "output_index": index, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": []}
    events = [
        {"type": "response.output_item.added", "output_index": index,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": empty},
    ]  # fmt: skip
    events += [
        {"type": "response.output_text.delta", **where, "delta": p} for p in _pieces(text, chunks)
    ]
    events += [
        {"type": "response.output_text.done", **where, "text": text},
        {"type": "response.content_part.done", **where, "part": item["content"][0]},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]
    return events


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


# --- Chat Completions rendering ----------------------------------------------------------


def chat_usage(reply: OpenAIReply) -> dict:
    usage = reply.usage
    return {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("input_tokens", 0) + usage.get("output_tokens", 0),
        "prompt_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
        "completion_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
    }


def chat_chunks(reply: OpenAIReply, model: str, include_usage: bool) -> list[dict]:
    base = {"id": _id("chatcmpl"), "object": "chat.completion.chunk", "created": 0, "model": model}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    for piece in _pieces(reply.text, reply.chunks):
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        # OpenAI's extra last chunk: no choices, only usage (and only when asked for).
        chunks.append({**base, "choices": [], "usage": chat_usage(reply)})
    return chunks


def chat_completion(reply: OpenAIReply, model: str) -> dict:
    message = {"role": "assistant", "content": reply.text}
    return {
        "id": _id("chatcmpl"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": chat_usage(reply),
    }


# --- handlers (bound to a FakeProvider) ------------------------------------------------------


class OpenAIRoutes:
    def __init__(self, fake) -> None:
        self.fake = fake
        self.ws_frames: list[dict] = []
        self.websockets = True  # False: GET /v1/responses is a 404, like a provider without one
        self.ws_one_response = False  # True: close each websocket after one response (idle limit)
        self.ws_connections = 0
        self.default: OpenAIReply | None = None  # the OpenAI answer when none is queued

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/responses", self.websocket)
        app.router.add_post("/v1/responses/compact", self.compact)
        app.router.add_post("/v1/chat/completions", self.chat)

    async def _data(self, request: web.Request) -> dict:
        body = await self.fake.record(request)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    def _next(self, fallback: OpenAIReply) -> OpenAIReply:
        fallback = self.default or fallback
        reply = self.fake.next_reply(fallback)
        return reply if isinstance(reply, OpenAIReply) else fallback

    def _error(self, reply: OpenAIReply) -> web.Response:
        return web.Response(
            status=reply.error_status, body=orjson.dumps(reply.error),
            content_type="application/json", headers=reply.headers,
        )  # fmt: skip

    async def responses(self, request: web.Request) -> web.StreamResponse:
        data = await self._data(request)
        reply = self._next(response())
        return await self._answer(request, reply, data)

    async def compact(self, request: web.Request) -> web.StreamResponse:
        data = await self._data(request)
        reply = self._next(response(compaction=True))
        return await self._answer(request, reply, data)

    async def _answer(self, request, reply: OpenAIReply, data: dict):
        if reply.error is not None:
            return self._error(reply)
        model = str(data.get("model", "gpt-test"))
        if reply.head_delay:
            await asyncio.sleep(reply.head_delay)
        headers = {"x-request-id": f"req_{next(_ids):08d}", **reply.headers}
        if data.get("stream") is not True:
            body = response_object(reply, model, output_items(reply, data), reply.status)
            return await self._body(request, reply, orjson.dumps(body), headers)
        events = [sse(event) for event in response_events(reply, model, data)]
        return await self._stream(request, reply, events, headers)

    async def _body(self, request, reply: OpenAIReply, body: bytes, headers: dict):
        if reply.cut_after is None:
            return web.Response(body=body, content_type="application/json", headers=headers)
        response = web.StreamResponse(headers={**headers, "content-type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        request.transport.close()  # announced the whole body, sent half
        return response

    async def _stream(self, request, reply: OpenAIReply, events: list[bytes], headers: dict):
        stream = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await stream.prepare(request)
        try:
            for sent, event in enumerate(events):
                if sent == reply.cut_after:
                    if reply.cut == "drop":
                        request.transport.close()
                        return stream
                    break
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                await stream.write(event)
        except ConnectionResetError:
            self.fake.disconnects += 1  # the client (the gateway) went away mid-answer
            return stream
        await stream.write_eof()
        return stream

    async def chat(self, request: web.Request) -> web.StreamResponse:
        data = await self._data(request)
        reply = self._next(chat())
        if reply.error is not None:
            return self._error(reply)
        model = str(data.get("model", "gpt-test"))
        if reply.head_delay:
            await asyncio.sleep(reply.head_delay)
        if data.get("stream") is not True:
            return await self._body(request, reply, orjson.dumps(chat_completion(reply, model)), {})
        options = data.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = [
            b"data: " + orjson.dumps(c) + b"\n\n" for c in chat_chunks(reply, model, include_usage)
        ]
        return await self._stream(request, reply, [*events, b"data: [DONE]\n\n"], {})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        await self.fake.record(request)
        if not self.websockets:
            raise web.HTTPNotFound()
        self.ws_connections += 1
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                break
            frame = orjson.loads(message.data)
            self.ws_frames.append(frame)
            if frame.get("generate") is False:  # a warm-up: takes no scripted answer
                reply = response("", input_tokens=0, output_tokens=0)
            else:
                reply = self._next(response())
            if reply.head_delay:
                await asyncio.sleep(reply.head_delay)
            for index, event in enumerate(response_events(reply, str(frame.get("model", "gpt")))):
                if reply.delay and index:
                    await asyncio.sleep(reply.delay)
                await socket.send_str(orjson.dumps(event).decode())
            if self.ws_one_response:
                await socket.close()
        return socket
