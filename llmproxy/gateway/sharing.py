"""Identical requests in flight share one upstream call (used for compaction).

Codex can send the same compaction twice (a retry, a second window); summarising the same
history twice costs a large prompt twice. The first request goes upstream as usual and is
billed; an identical one that arrives while it is in flight gets the same status, headers
and bytes, replayed from the first, and costs nothing.

A streamed answer is read by a task of its own into a buffer that every reader (the first
request's client and each follower) replays at its own pace, so one reader hanging up does
not cut the others off. The upstream call is given up only when every reader has left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.exchange import Exchange
from llmproxy.gateway.messages import Reply, error_reply
from llmproxy.gateway.protocols.base import Headers

_in_flight: dict[str, Shared] = {}
SHARED_HEADER = (b"x-llmproxy-shared", b"true")


class Shared:
    def __init__(self, key: str) -> None:
        self.key = key
        self.ready = asyncio.Event()
        self.status = 502
        self.headers: Headers = []
        self.body = b""
        self.streamed = False
        self.chunks: list[bytes] = []
        self.done = False
        self.complete = False  # the answer was read to its end
        self.failed = False
        self.readers = 0
        self.pump: asyncio.Task | None = None
        self._changed = asyncio.Event()

    def _forget(self) -> None:
        if _in_flight.get(self.key) is self:
            del _in_flight[self.key]

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def fail(self) -> None:
        """The first request never produced a reply (it was cancelled, or the gateway
        failed): followers get an error in their protocol instead."""
        self._forget()
        self.failed = self.done = True
        self.ready.set()

    def lead(self, exchange: Exchange, reply: Reply) -> Reply:
        self.status, self.headers, self.body = reply.status, reply.headers, reply.body
        self.streamed = reply.stream is not None
        if not self.streamed:
            self.done = self.complete = True
            self._forget()
            self.ready.set()
            return reply
        self.pump = asyncio.ensure_future(self._read(exchange, reply))
        self.ready.set()
        return self._reader(reply.status, reply.headers, None)

    async def _read(self, exchange: Exchange, reply: Reply) -> None:
        try:
            async for chunk in reply.stream:
                self.chunks.append(chunk)
                self._wake()
        finally:
            await reply.finish()  # settles the first request's call
            self.complete = exchange.complete
            self.done = True
            self._forget()
            self._wake()

    async def follow(self, exchange: Exchange) -> Reply:
        await self.ready.wait()
        exchange.records_usage = False
        exchange.status = self.status
        if self.failed:
            reply = error_reply(
                exchange.protocol,
                ProxyError(
                    ErrorKind.UPSTREAM_UNAVAILABLE,
                    "The identical request this one was sharing failed; send it again.",
                ),
            )
            reply.close = exchange.settle
            return reply
        headers = [*self.headers, SHARED_HEADER]
        if not self.streamed:
            exchange.complete = self.complete
            return Reply(self.status, headers, self.body, close=exchange.settle)
        return self._reader(self.status, headers, exchange)

    def _reader(self, status: int, headers: Headers, follower: Exchange | None) -> Reply:
        self.readers += 1

        async def leave() -> None:
            self.readers -= 1
            if self.readers == 0 and not self.done and self.pump is not None:
                self.pump.cancel()  # nobody is left to read the answer: stop the call
                with contextlib.suppress(asyncio.CancelledError):
                    await self.pump
            if follower is not None:
                follower.complete = self.complete
                await follower.settle(status)

        return Reply(status, headers, stream=self._replay(), close=leave)

    async def _replay(self) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            while sent < len(self.chunks):
                yield self.chunks[sent]
                sent += 1
            if self.done:
                return
            await self._changed.wait()


async def share(exchange: Exchange, lead: Callable[[Exchange], Awaitable[Reply]]) -> Reply:
    key = exchange.sharing_key()
    shared = _in_flight.get(key)
    if shared is not None:
        return await shared.follow(exchange)
    shared = _in_flight[key] = Shared(key)
    try:
        reply = await lead(exchange)
    except BaseException:
        shared.fail()
        raise
    return shared.lead(exchange, reply)
