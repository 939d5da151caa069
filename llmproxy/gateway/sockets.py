"""The Responses API over a websocket, as Codex uses it (``GET /v1/responses`` upgraded).

The key is checked at the upgrade; then every ``response.create`` frame runs through the same
pipeline as an HTTP request (authenticate, authorize, admit, settle), one frame at a time.

Where the provider serves Responses over a websocket itself (``Provider.websockets``), this
connection holds one upstream socket per provider and relays frames both ways unchanged;
the provider keeps the connection's state, so ``previous_response_id`` with incremental
input works as it does directly. Otherwise (or when that upstream socket cannot be opened)
each frame is bridged to the provider's HTTP SSE endpoint and each SSE event's JSON goes back
as one text frame, unchanged. Codex sends ``previous_response_id`` with only the new input
items even with ``store: false``; over HTTP the provider keeps nothing, so this connection
keeps each response's full input and output and expands the next frame to the whole history
before forwarding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

import aiohttp
import orjson
from channels.consumer import AsyncConsumer
from django.conf import settings

from llmproxy.core import draining, metrics
from llmproxy.core.ids import new_id
from llmproxy.gateway import edge, pipeline, upstream
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.kinds import kind_of
from llmproxy.gateway.messages import give_up
from llmproxy.gateway.policy import ProviderInfo, policies
from llmproxy.gateway.protocols import openai
from llmproxy.gateway.protocols.base import dump_json
from llmproxy.gateway.protocols.sse import SSESplitter

log = logging.getLogger(__name__)

TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")
HISTORY_KEPT = 8  # responses remembered per connection for previous_response_id
# Frames received while earlier ones are still being answered; more get an error frame.
MAX_QUEUED_FRAMES = 4


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
        if not isinstance(new_input, list):
            raise ProxyError(ErrorKind.INVALID_REQUEST, "input: expected a string or a list.")
        expanded = {k: v for k, v in body.items() if k != "previous_response_id"}
        expanded["input"] = [*self._items[previous], *new_input]
        return expanded

    def remember(self, response_id: str, full_input: list, output: list) -> None:
        self._items[response_id] = [*full_input, *output]
        while len(self._items) > HISTORY_KEPT:
            self._items.popitem(last=False)


# What OpenAI answers on a socket past its 60-minute limit; Codex then opens a new socket
# and sends the request again in full, which is what a draining worker wants of it.
RECONNECT_CODE = "websocket_connection_limit_reached"
RECONNECT_FRAME = {
    "type": "error",
    "status": 400,
    "error": {
        "type": "invalid_request_error",
        "code": RECONNECT_CODE,
        "message": "This gateway worker is shutting down. Create a new websocket connection "
        "to continue.",
    },
}
GOING_AWAY = 1001
# Queued when draining starts: the socket closes once the frames before it are answered.
DRAIN = ProxyError(ErrorKind.DRAINING, "draining")


def error_frame(error: ProxyError) -> dict:
    return {
        "type": "error",
        "status": openai.PROTOCOL.error_status(error),
        "error": openai.PROTOCOL.error_object(error),
    }


class UpstreamTurn:
    """One response.create on the provider's websocket: the frames that answer it."""

    def __init__(self, connection: ResponsesSocket, exchange, socket, payload: str) -> None:
        self.connection = connection
        self.exchange = exchange
        self.provider = exchange.provider
        self.socket = socket
        self.payload = payload
        # A socket this connection used before may have been closed by the provider while
        # it sat idle: then the frame is sent once more, on a new socket.
        self.reused = connection.sent_on.get(self.provider.id) is socket

    async def _resend(self) -> None:
        self.socket = await self.connection.replace_socket(self.provider)
        self.reused = False
        await self.socket.send_str(self.payload)

    async def frames(self) -> AsyncIterator[str]:
        try:
            await self.socket.send_str(self.payload)
        except ConnectionError:
            if not self.reused:
                self.exchange.reached = False
                raise
            await self._resend()
        self.connection.sent_on[self.provider.id] = self.socket
        while not self.exchange.tap.ended:
            message = await self.socket.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                yield message.data
            elif self.reused and self.exchange.first_byte is None:
                # Closed while idle between turns: this frame was never answered.
                await self._resend()
            else:
                raise upstream.UpstreamClosed(f"provider websocket ended ({message.type.name})")

    async def release(self, complete: bool) -> None:
        if not complete:
            # Mid-answer (the client left, or the provider's socket broke): that socket's
            # state is unknown now, so it is not used again.
            self.connection.upstreams.pop(self.provider.id, None)
            await self.socket.close()

    def broken(self, message: str) -> str:
        error = ProxyError(
            ErrorKind.UPSTREAM_UNAVAILABLE,
            f"The websocket to provider {self.provider.name!r} failed mid-answer.",
        )
        return orjson.dumps(error_frame(error)).decode()


class ResponsesSocket(AsyncConsumer):
    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.base_send = send
        self.gone = False  # the client closed its socket: nothing more is sent
        self.history = History()
        self.upstreams: dict[int, aiohttp.ClientWebSocketResponse] = {}  # by provider id
        self.bridged: set[int] = set()  # providers whose websocket could not be opened
        self.sent_on: dict[int, aiohttp.ClientWebSocketResponse] = {}  # last socket used
        self.closing = False  # this side closed the socket (draining)
        if (await receive())["type"] != "websocket.connect":
            return
        if draining.is_draining():
            error = ProxyError(ErrorKind.DRAINING, "This gateway worker is shutting down.")
            await self._refuse_upgrade(scope, send, 503, error, fallback=1013)
            return
        if not settings.LLMPROXY_WEBSOCKETS:
            error = ProxyError(ErrorKind.INVALID_REQUEST, "Websockets are off here; use HTTP.")
            await self._refuse_upgrade(scope, send, 426, error, fallback=1013)
            return
        try:
            # The same header limits as an HTTP request, before the upgrade is accepted.
            error = edge.scope_header_error(scope)
            if error is not None:
                raise error
            pipeline.forwarded_headers(openai.PROTOCOL, scope["headers"])
        except ProxyError as error:
            await self._refuse_upgrade(scope, send, error.kind.status, error, fallback=1008)
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
        frames: asyncio.Queue[str | ProxyError | None] = asyncio.Queue()
        self.frames = frames
        worker = asyncio.ensure_future(self._work(frames))
        metrics.OPEN_WEBSOCKETS.inc()
        draining.watch(self._drain)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message["type"] == "websocket.receive":
                    frames.put_nowait(self._frame(message, frames.qsize()))
        finally:
            # The client is gone: frames it queued are dropped, the response in flight may
            # read on briefly for its usage figure, then it is stopped and settled.
            self.gone = True
            while not frames.empty():
                frames.get_nowait()
            frames.put_nowait(None)
            await give_up(worker, settings.LLMPROXY_ABANDONED_READ_SECONDS)
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            for socket in self.upstreams.values():
                await socket.close()
            draining.unwatch(self._drain)
            metrics.OPEN_WEBSOCKETS.dec()

    # --- draining (docs/operations.md, "Deploys") -----------------------------------------------

    def _drain(self) -> None:
        """The worker began to drain: the socket is closed once the frames before this
        point are answered (at once when it is idle)."""
        self.frames.put_nowait(DRAIN)

    async def _close_for_drain(self) -> None:
        if self.closing or self.gone:
            return
        self.closing = True
        await self.base_send(
            {"type": "websocket.close", "code": GOING_AWAY, "reason": "server draining: reconnect"}
        )

    @staticmethod
    def _frame(message: dict, queued: int) -> str | ProxyError:
        """A received message as the text to handle, or the error its answer will be (in
        turn, after the frames before it): too big, or too many frames already waiting."""
        text = message.get("text")
        if text is None:
            raw = message.get("bytes") or b""
            size = len(raw)
        else:
            size = len(text) if text.isascii() else len(text.encode())
        limit = settings.LLMPROXY_MAX_FRAME_BYTES
        if size > limit:
            return ProxyError(
                ErrorKind.REQUEST_TOO_LARGE, f"A frame is larger than {limit} bytes ({size})."
            )
        if queued >= MAX_QUEUED_FRAMES:
            return ProxyError(
                ErrorKind.RATE_LIMIT,
                f"More than {MAX_QUEUED_FRAMES} frames are waiting on this socket; send the "
                "next one when a response is done.",
                retry_after=1,
            )
        return raw.decode("utf-8", "replace") if text is None else text

    async def _refuse_upgrade(
        self, scope, send, status: int, error: ProxyError, fallback: int
    ) -> None:
        """Refuse the upgrade with an HTTP answer in the OpenAI shape (426 when websockets
        are off: Codex falls back to HTTP at once; anything else costs it retries)."""
        if "websocket.http.response" in scope.get("extensions", {}):
            body = openai.PROTOCOL.error_body(error)
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": fallback})

    async def _send_json(self, event: dict) -> None:
        await self._send_text(orjson.dumps(event).decode())

    async def _send_text(self, text: str) -> None:
        if not self.gone:
            await self.base_send({"type": "websocket.send", "text": text})

    async def _work(self, frames: asyncio.Queue[str | ProxyError | None]) -> None:
        while True:
            text = await frames.get()
            if text is None:
                return
            if self.closing:
                continue  # closed for a drain: what the client sent meanwhile goes unanswered
            if text is DRAIN:
                await self._close_for_drain()
                continue
            if draining.is_draining():
                # Answered as OpenAI answers a socket past its limit: Codex reconnects (to
                # another worker) and sends this request again in full.
                await self._send_json(RECONNECT_FRAME)
                await self._close_for_drain()
                continue
            try:
                if isinstance(text, ProxyError):
                    raise text
                await self._handle(text)
            except ProxyError as error:
                metrics.refused(error.kind.name, "openai")
                await self._send_json(error_frame(error))
            except Exception:
                # Every frame gets an answer and the socket stays usable, whatever went wrong.
                log.exception("websocket frame failed")
                failure = ProxyError(ErrorKind.INTERNAL, "The gateway failed on this frame.")
                await self._send_json(error_frame(failure))
            if draining.is_draining() and frames.empty():
                await self._close_for_drain()  # its turn is done: reconnect elsewhere

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
        provider = await self._websocket_provider(body)
        if provider is not None and await self._through_upstream_socket(provider, frame, body):
            return
        if frame.get("generate") is False:
            await self._warm_up(body)
            return
        body = self.history.expand(body)
        body["stream"] = True
        incoming = pipeline.Incoming(
            "POST", "/v1/responses", b"", self.scope["headers"], dump_json(body)
        )
        reply = await pipeline.handle(incoming, openai.PROTOCOL, openai.RESPONSES)
        await self._relay(reply, body)

    # --- the provider's own websocket ---------------------------------------------------------

    async def _websocket_provider(self, body: dict) -> ProviderInfo | None:
        """The provider of this frame's model, if it takes Responses over a websocket."""
        model = body.get("model")
        if not isinstance(model, str):
            return None
        found = (await policies.catalog()).route(model, openai.PROTOCOL.provider_kind)
        if found is None or found[0].id in self.bridged:
            return None
        if kind_of(found[0].kind).websocket(found[0], openai.RESPONSES.upstream_path) is None:
            return None
        return found[0]

    async def _upstream_socket(self, provider: ProviderInfo) -> aiohttp.ClientWebSocketResponse:
        socket = self.upstreams.get(provider.id)
        if socket is not None and not socket.closed:
            return socket
        found = kind_of(provider.kind).websocket(provider, openai.RESPONSES.upstream_path)
        if found is None:  # this caller's route went to a provider without one
            raise aiohttp.ClientError(f"provider {provider.name!r} has no Responses websocket")
        url, credential = found
        headers = pipeline.upstream_headers(openai.PROTOCOL, provider, self.scope["headers"])
        headers += credential
        async with asyncio.timeout(settings.LLMPROXY_CONNECT_TIMEOUT):
            socket = await upstream.get().websocket(url, headers)
        self.upstreams[provider.id] = socket
        return socket

    async def replace_socket(self, provider: ProviderInfo) -> aiohttp.ClientWebSocketResponse:
        stale = self.upstreams.pop(provider.id, None)
        if stale is not None:
            await stale.close()
        return await self._upstream_socket(provider)

    async def _through_upstream_socket(
        self, provider: ProviderInfo, frame: dict, body: dict
    ) -> bool:
        """Run one frame over the provider's websocket; False: bridge it to HTTP instead.

        The frame is an ``Exchange`` like an HTTP request: admitted, relayed by
        ``Exchange.relay`` and settled by ``Exchange.settle`` when the reply is finished.
        """
        incoming = pipeline.Incoming(
            "POST", "/v1/responses", b"", self.scope["headers"], dump_json(body)
        )
        exchange = await pipeline.prepare(incoming, openai.PROTOCOL, openai.RESPONSES)
        try:
            socket = await self._upstream_socket(exchange.provider)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception's str, never its repr: aiohttp's repr carries the request headers,
            # the provider's credential among them.
            log.warning(
                "provider %r: no Responses websocket (%s: %s); bridging this connection to HTTP",
                provider.name, type(exc).__name__, exc,
            )  # fmt: skip
            self.bridged.add(provider.id)
            return False
        outgoing = dict(frame)
        exchange.rewrite(outgoing)
        turn = UpstreamTurn(self, exchange, socket, dump_json(outgoing).decode())
        if frame.get("generate") is False:
            exchange.records_usage = False  # a warm-up generates nothing: not admitted or billed
        else:
            await exchange.admit()
        exchange.tap = openai.FrameTap(exchange.info.container_memory)
        exchange.status = 200
        exchange.release = turn.release
        frames = exchange.relay(turn.frames(), turn.broken)
        await self._send_frames(pipeline.Reply(200, [], stream=frames, close=exchange.close))
        return True

    async def _send_frames(self, reply: pipeline.Reply) -> None:
        try:
            async for text in reply.stream:
                await self._send_text(text)
        finally:
            await reply.finish()

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
                await self._send_text(data.decode())
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
