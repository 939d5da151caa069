"""Channels consumers: thin adapters between ASGI and the pipeline.

``ProxyConsumer`` replaces Channels' dispatch loop for one reason: while the answer streams,
something must keep reading the ASGI channel to notice a client that hangs up, so the upstream
call can be cancelled and the usage seen so far settled. It also skips the per-message
thread hop Channels makes to close stale database connections: the proxy path never
touches the database once warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from channels.generic.http import AsyncHttpConsumer
from django.conf import settings

from llmproxy.core import metrics
from llmproxy.gateway import pipeline
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.messages import give_up
from llmproxy.gateway.protocols import anthropic, openai
from llmproxy.gateway.protocols.base import Endpoint, Protocol

log = logging.getLogger(__name__)


def protocol_for(scope) -> Protocol:
    """For a path both protocols share: by its prefix, else Anthropic clients send these."""
    path = scope["path"]
    if path.startswith("/anthropic/"):
        return anthropic.PROTOCOL
    if path.startswith("/openai/"):
        return openai.PROTOCOL
    names = {name for name, _ in scope["headers"]}
    if b"anthropic-version" in names or b"x-api-key" in names:
        return anthropic.PROTOCOL
    return openai.PROTOCOL


class ProxyConsumer(AsyncHttpConsumer):
    protocol: Protocol | None = None
    endpoint: Endpoint | None = None  # None: the model list

    def __init__(self, *, protocol: Protocol | None, endpoint: Endpoint | None = None) -> None:
        super().__init__()
        self.protocol = protocol
        self.endpoint = endpoint

    async def __call__(self, scope, receive, send):
        self.arrived = time.perf_counter()
        self.scope = scope
        self.base_send = send
        self._complete = False
        self._gone = False  # the client hung up: nothing more is sent
        if self.protocol is None:
            self.protocol = protocol_for(scope)
        body = await self._read_body(receive)
        if body is None:
            return
        work = asyncio.ensure_future(self._respond(body))
        watcher = asyncio.ensure_future(self._wait_for_disconnect(receive))
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done() and not self._complete:
            self._gone = True
            await give_up(work, settings.LLMPROXY_ABANDONED_READ_SECONDS)
        with contextlib.suppress(asyncio.CancelledError):
            await work
        watcher.cancel()

    async def _read_body(self, receive) -> bytes | None:
        parts, size, limit = [], 0, settings.LLMPROXY_MAX_BODY_BYTES
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                metrics.refused("REQUEST_TOO_LARGE", self.protocol.name)
                await self._send_reply(
                    pipeline.error_reply(
                        self.protocol,
                        ProxyError(
                            ErrorKind.REQUEST_TOO_LARGE,
                            f"The request body is larger than {limit} bytes.",
                        ),
                    )
                )
                return None
            parts.append(chunk)
            if not message.get("more_body"):
                return b"".join(parts)

    @staticmethod
    async def _wait_for_disconnect(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    def _incoming(self, body: bytes) -> pipeline.Incoming:
        scope = self.scope
        return pipeline.Incoming(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b""),
            headers=scope["headers"],
            body=body,
            arrived=self.arrived,
        )

    async def _respond(self, body: bytes) -> None:
        incoming = self._incoming(body)
        try:
            if self.endpoint is None:
                reply = await pipeline.list_models(incoming, self.protocol)
            elif self.scope["method"] != "POST":
                metrics.refused("METHOD_NOT_ALLOWED", self.protocol.name)
                reply = pipeline.error_reply(
                    self.protocol,
                    ProxyError(
                        ErrorKind.METHOD_NOT_ALLOWED,
                        f"Use POST for {self.scope['path']}.",
                        headers={"allow": "POST"},
                    ),
                )
            else:
                reply = await pipeline.handle(incoming, self.protocol, self.endpoint)
        except Exception:
            log.exception("proxy failure on %s", self.scope["path"])
            reply = pipeline.error_reply(
                self.protocol,
                ProxyError(ErrorKind.INTERNAL, "The gateway failed on this request; try again."),
            )
        await self._send_reply(reply)

    async def _send(self, message: dict) -> None:
        if not self._gone:
            await self.base_send(message)

    async def _send_reply(self, reply: pipeline.Reply) -> None:
        headers = reply.headers
        if reply.stream is None:
            headers = [*headers, (b"content-length", str(len(reply.body)).encode())]
        try:
            await self._send(
                {"type": "http.response.start", "status": reply.status, "headers": headers}
            )
            if reply.stream is not None:
                with metrics.OPEN_STREAMS.track_inprogress():
                    async for chunk in reply.stream:
                        await self._send(
                            {"type": "http.response.body", "body": chunk, "more_body": True}
                        )
            # Settled before the last message: a client that has its whole answer finds
            # its limits and the ledger already updated.
            await reply.finish()
            self._complete = True
            await self._send({"type": "http.response.body", "body": reply.body})
        finally:
            await reply.finish()


async def head_ok(scope, receive, send):
    """Claude Code's warm-up ``HEAD {base_url}``: answer at once, no auth, no body."""
    if scope["method"] not in ("HEAD", "GET"):
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b'{"service":"llmproxy"}' if scope["method"] == "GET" else b""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def not_found(scope, receive, send):
    """An unknown path under a proxy prefix: a 404 in the client's protocol, never HTML."""
    protocol = protocol_for(scope)
    reply = pipeline.error_reply(
        protocol,
        ProxyError(ErrorKind.NOT_FOUND, f"No such endpoint: {scope['method']} {scope['path']}."),
    )
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
