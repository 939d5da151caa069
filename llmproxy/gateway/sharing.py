"""Identical requests in flight share one upstream call (used for compaction).

Codex can send the same compaction twice (a retry, a second window); summarising the same
history twice costs a large prompt twice. The first request goes upstream as usual and is
billed; an identical one that arrives while it is in flight gets the same status, headers
and bytes, replayed from the first, and costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmproxy.gateway.pipeline import Reply

_in_flight: dict[str, SharedReply] = {}


class SharedReply:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.head: tuple[int, list, bytes] | None = None
        self.streamed = False
        self.chunks: list[bytes] = []
        self.done = False
        self._changed = asyncio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def lead(self, reply: Reply, finished: Callable[[], None]) -> Reply:
        from llmproxy.gateway.pipeline import Reply

        self.head = (reply.status, reply.headers, reply.body)
        self.streamed = reply.stream is not None
        self.ready.set()
        if reply.stream is None:
            self.done = True
            finished()
            return reply
        source = reply.stream

        async def tee() -> AsyncIterator[bytes]:
            try:
                async for chunk in source:
                    self.chunks.append(chunk)
                    self._wake()
                    yield chunk
            finally:
                self.done = True
                self._wake()
                finished()
                await source.aclose()

        return Reply(reply.status, reply.headers, stream=tee(), close=reply.close)

    async def follow(self) -> Reply:
        from llmproxy.gateway.pipeline import Reply

        await self.ready.wait()
        status, headers, body = self.head
        headers = [*headers, (b"x-llmproxy-shared", b"true")]
        if not self.streamed:
            return Reply(status, headers, body)
        return Reply(status, headers, stream=self._replay())

    async def _replay(self) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            while sent < len(self.chunks):
                yield self.chunks[sent]
                sent += 1
            if self.done:
                return
            changed = self._changed
            if sent == len(self.chunks) and not self.done:
                await changed.wait()


async def share(key: str, lead: Callable[[], Awaitable[Reply]]) -> Reply:
    shared = _in_flight.get(key)
    if shared is not None:
        return await shared.follow()
    shared = _in_flight[key] = SharedReply()

    def finished() -> None:
        if _in_flight.get(key) is shared:
            del _in_flight[key]

    try:
        reply = await lead()
    except BaseException:
        finished()
        shared.done = True
        shared.head = (502, [], b"")
        shared.ready.set()
        raise
    return shared.lead(reply, finished)
