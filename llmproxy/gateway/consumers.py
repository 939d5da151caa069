"""Channels consumers: thin adapters between ASGI and the pipeline.

``ProxyConsumer`` replaces Channels' dispatch loop for one reason: while the answer streams,
something must keep reading the ASGI channel to notice a client that hangs up, so the upstream
call can be cancelled and the usage seen so far settled. It also skips the per-message
thread hop Channels makes to close stale database connections: the proxy path never
touches the database once warm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus

from channels.generic.http import AsyncHttpConsumer
from django.conf import settings

from llmproxy.core import draining, metrics
from llmproxy.gateway import edge, pipeline
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.policy import KeyPolicy
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


def shutting_down() -> ProxyError:
    """A new call reached a worker that is draining: retry it, on another connection."""
    return ProxyError(
        ErrorKind.DRAINING,
        "This gateway worker is shutting down; retry the request.",
        retry_after=1,
        headers={"connection": "close"},
    )


def failure() -> ProxyError:
    return ProxyError(ErrorKind.INTERNAL, "The gateway failed on this request; try again.")


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
        self._abandoned = False  # ...and the grace time to read on ran out
        if self.protocol is None:
            self.protocol = protocol_for(scope)
        incoming = self._incoming()
        length = edge.declared_length(scope["headers"])
        try:
            # Everything the headers alone decide, the key first: a client without a valid
            # key never gets a byte of its body read.
            policy = await self._check_head(incoming, length)
            body = await edge.read_body(receive, length)
        except ProxyError as error:
            # Answered before the body was read: see edge.CLOSES for what happens to the rest.
            metrics.refused(error.kind.name, self.protocol.name)
            reply = pipeline.error_reply(self.protocol, error)
            await self._send_reply(reply, close=error.kind in edge.CLOSES)
            return
        except Exception:
            log.exception("proxy failure on %s", scope["path"])
            await self._send_reply(pipeline.error_reply(self.protocol, failure()), close=True)
            return
        if body is None:
            return
        incoming.body = body
        # The call runs in this task; a second one watches the channel for the client
        # hanging up (the cheapest shape: no task for the work and no asyncio.wait).
        task = asyncio.current_task()
        watcher = asyncio.ensure_future(self._watch(receive, task))
        try:
            await self._respond(incoming, policy)
        except asyncio.CancelledError:
            if not self._abandoned:
                raise  # not the watcher's doing: the server is cancelling this request
            task.uncancel()
        finally:
            watcher.cancel()

    async def _check_head(self, incoming: pipeline.Incoming, length: int | None) -> KeyPolicy:
        if draining.is_draining():
            raise shutting_down()
        if self.endpoint is not None and incoming.method != "POST":
            raise ProxyError(
                ErrorKind.METHOD_NOT_ALLOWED,
                f"Use POST for {incoming.path}.",
                headers={"allow": "POST"},
            )
        policy = await pipeline.authenticate(incoming)
        limit = settings.LLMPROXY_MAX_BODY_BYTES
        if length is not None and length > limit:
            raise ProxyError(
                ErrorKind.REQUEST_TOO_LARGE, f"The request body is larger than {limit} bytes."
            )
        return policy

    async def _watch(self, receive, task: asyncio.Task) -> None:
        """Wait for the client to hang up. If it does before its answer is complete, let the
        call read on for LLMPROXY_ABANDONED_READ_SECONDS (as ``messages.give_up`` does for
        websockets), then cancel it. This task is cancelled, synchronously, as soon as the
        call returns, so the cancel it sends can only reach the call."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if self._complete:
            return
        self._gone = True
        grace = settings.LLMPROXY_ABANDONED_READ_SECONDS
        if grace > 0:
            await asyncio.sleep(grace)
        self._abandoned = True
        task.cancel()

    def _incoming(self) -> pipeline.Incoming:
        scope = self.scope
        return pipeline.Incoming(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b""),
            headers=scope["headers"],
            body=b"",
            arrived=self.arrived,
        )

    async def _respond(self, incoming: pipeline.Incoming, policy: KeyPolicy) -> None:
        try:
            if self.endpoint is None:
                reply = await pipeline.list_models(incoming, self.protocol, policy)
            else:
                reply = await pipeline.handle(incoming, self.protocol, self.endpoint, policy)
        except Exception:
            log.exception("proxy failure on %s", self.scope["path"])
            reply = pipeline.error_reply(self.protocol, failure())
        await self._send_reply(reply)

    async def _send(self, message: dict) -> None:
        if not self._gone:
            await self.base_send(message)

    async def _send_reply(self, reply: pipeline.Reply, close: bool = False) -> None:
        headers = reply.headers
        if reply.stream is None:
            headers = [*headers, (b"content-length", str(len(reply.body)).encode())]
        if close and edge.has_body(self.scope["headers"]):
            headers = [*headers, edge.CLOSE]
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


async def refuse(scope, receive, send, error: ProxyError) -> None:
    """Refuse a request in the client's protocol before its body was read whole (its
    headers are over the limits; on Django's paths, its body is too slow or too big); if a
    body follows, the connection closes after this."""
    reply = pipeline.error_reply(protocol_for(scope), error)
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    if edge.has_body(scope["headers"]):
        headers.append(edge.CLOSE)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


HEAD_REFUSALS = {408: ErrorKind.REQUEST_TIMEOUT, 431: ErrorKind.HEADERS_TOO_LARGE}


def head_refusal(status: int, message: str, path: str, headers) -> bytes:
    """The whole HTTP response the server writes for a request head it cuts off (too big,
    too slow; ``llmproxy.server``), in the protocol the path and the headers so far tell."""
    error = ProxyError(HEAD_REFUSALS[status], message)
    reply = pipeline.error_reply(protocol_for({"path": path, "headers": headers}), error)
    lines = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}".encode()]
    lines += [name + b": " + value for name, value in reply.headers]
    lines += [b"content-length: %d" % len(reply.body), b"connection: close", b"", reply.body]
    return b"\r\n".join(lines)


def read_first(app):
    """Django's side (admin, API, dashboard, health) with the proxy's body limits: the body is
    read within the deadline, the size limit and the in-flight cap before Django sees it."""

    async def bounded(scope, receive, send):
        headers = scope["headers"]
        if not edge.has_body(headers):
            await app(scope, receive, send)
            return
        try:
            length = edge.declared_length(headers)
            limit = settings.LLMPROXY_MAX_BODY_BYTES
            if length is not None and length > limit:
                raise ProxyError(
                    ErrorKind.REQUEST_TOO_LARGE, f"The request body is larger than {limit} bytes."
                )
            body = await edge.read_body(receive, length)
        except ProxyError as error:
            await refuse(scope, receive, send, error)
            return
        if body is None:
            return
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await app(scope, replay, send)

    return bounded
