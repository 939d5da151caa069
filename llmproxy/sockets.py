"""The Responses API over a websocket, as Codex uses it (``GET /v1/responses`` upgraded).

The key is checked at the upgrade; then every ``response.create`` frame runs through the same
pipeline as an HTTP request (authorize, admit, forward, settle) and is bridged to the
provider's HTTP SSE endpoint. Each SSE event's JSON goes back as one text frame, unchanged.

Codex sends ``previous_response_id`` with only the new input items even with
``store: false``; the provider keeps nothing, so this connection keeps each response's full
input and output and expands the next frame to the whole history before forwarding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

import orjson
from channels.consumer import AsyncConsumer
from django.conf import settings

from llmproxy import pipeline
from llmproxy.errors import ErrorKind, ProxyError
from llmproxy.ids import new_id
from llmproxy.protocols import openai
from llmproxy.protocols.sse import SSESplitter

log = logging.getLogger(__name__)

TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")
HISTORY_KEPT = 8  # responses remembered per connection for previous_response_id


class History:
    """Full input + output of this connection's recent responses, by response id."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, list] = OrderedDict()

    def expand(self, body: dict) -> dict:
        previous = body.get("previous_response_id")
        if not isinstance(previous, str) or previous not in self._items:
            return body  # unknown here: the provider may know it (store: true)
        new_input = body.get("input", [])
        if isinstance(new_input, str):
            new_input = [{"role": "user", "content": new_input}]
        expanded = {k: v for k, v in body.items() if k != "previous_response_id"}
        expanded["input"] = [*self._items[previous], *new_input]
        return expanded

    def remember(self, response_id: str, full_input: list, output: list) -> None:
        self._items[response_id] = [*full_input, *output]
        while len(self._items) > HISTORY_KEPT:
            self._items.popitem(last=False)


def error_frame(error: ProxyError) -> dict:
    return {
        "type": "error",
        "status": openai.PROTOCOL.error_status(error),
        "error": openai.PROTOCOL.error_object(error),
    }


class ResponsesSocket(AsyncConsumer):
    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.base_send = send
        self.history = History()
        if (await receive())["type"] != "websocket.connect":
            return
        if not settings.LLMPROXY_WEBSOCKETS:
            await self._refuse_upgrade(scope, send)
            return
        incoming = pipeline.Incoming("GET", scope["path"], b"", scope["headers"], b"")
        await send({"type": "websocket.accept"})
        try:
            await pipeline.authenticate(incoming)
        except ProxyError as error:
            # An error event Codex shows, rather than a refused upgrade it would retry blindly.
            await self._send_json(error_frame(error))
            await send({"type": "websocket.close", "code": 1008})
            return
        frames: asyncio.Queue[str] = asyncio.Queue()
        worker = asyncio.ensure_future(self._work(frames))
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    if text is None:
                        text = (message.get("bytes") or b"").decode("utf-8", "replace")
                    frames.put_nowait(text)
        finally:
            worker.cancel()  # a response still streaming is cancelled and settled as partial
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _refuse_upgrade(self, scope, send) -> None:
        """426: Codex falls back to HTTP at once (anything else costs it retries)."""
        if "websocket.http.response" in scope.get("extensions", {}):
            body = openai.PROTOCOL.error_body(
                ProxyError(ErrorKind.INVALID_REQUEST, "Websockets are off here; use HTTP.")
            )
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 426,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1013})

    async def _send_json(self, event: dict) -> None:
        await self.base_send({"type": "websocket.send", "text": orjson.dumps(event).decode()})

    async def _work(self, frames: asyncio.Queue[str]) -> None:
        while True:
            text = await frames.get()
            try:
                await self._handle(text)
            except ProxyError as error:
                await self._send_json(error_frame(error))

    async def _handle(self, text: str) -> None:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ProxyError(ErrorKind.INVALID_REQUEST, "A frame is not valid JSON.") from None
        if not isinstance(frame, dict) or frame.get("type") != "response.create":
            raise ProxyError(
                ErrorKind.INVALID_REQUEST, 'Each frame must be {"type": "response.create", ...}.'
            )
        body = {k: v for k, v in frame.items() if k not in ("type", "generate")}
        if frame.get("generate") is False:
            await self._warm_up(body)
            return
        body = self.history.expand(body)
        body["stream"] = True
        incoming = pipeline.Incoming(
            "POST", "/v1/responses", b"", self.scope["headers"], orjson.dumps(body)
        )
        reply = await pipeline.handle(incoming, openai.PROTOCOL, openai.RESPONSES)
        await self._relay(reply, body)

    async def _warm_up(self, body: dict) -> None:
        """``generate: false`` only warms the connection: answered here, never billed."""
        response = {
            "id": f"resp_warmup_{new_id()}",
            "object": "response",
            "status": "completed",
            "model": body.get("model"),
            "output": [],
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        }
        await self._send_json({"type": "response.created", "response": response})
        await self._send_json({"type": "response.completed", "response": response})
        items = body.get("input")
        self.history.remember(response["id"], items if isinstance(items, list) else [], [])

    async def _relay(self, reply: pipeline.Reply, body: dict) -> None:
        try:
            response_id, output = await self._relay_events(reply)
        finally:
            await reply.finish()
        if response_id:
            items = body.get("input")
            self.history.remember(response_id, items if isinstance(items, list) else [], output)

    async def _relay_events(self, reply: pipeline.Reply) -> tuple[str | None, list]:
        if reply.stream is None or reply.status >= 400:
            await self._relay_error(reply)
            return None, []
        events = SSESplitter()
        output: list = []
        response_id = None
        async for chunk in reply.stream:
            for name, data in events.feed(chunk):
                await self.base_send({"type": "websocket.send", "text": data.decode()})
                if name == b"response.output_item.done" or name in TERMINAL:
                    response_id = self._track(name, data, output) or response_id
        return response_id, output

    @staticmethod
    def _track(name: bytes, data: bytes, output: list) -> str | None:
        event = orjson.loads(data)
        if name == b"response.output_item.done":
            output.append(event.get("item"))
            return None
        response = event.get("response") or {}
        if response.get("output"):
            output[:] = response["output"]
        return response.get("id")

    async def _relay_error(self, reply: pipeline.Reply) -> None:
        body = reply.body
        if reply.stream is not None:
            body = b"".join([chunk async for chunk in reply.stream])
        try:
            error = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if not isinstance(error, dict):
            error = {"message": f"upstream answered HTTP {reply.status}", "type": "server_error"}
        await self._send_json({"type": "error", "status": reply.status, "error": error})
