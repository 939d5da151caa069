"""The request the gateway received and the reply it sends, free of any ASGI or Channels type."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from llmproxy.gateway.errors import ProxyError
from llmproxy.gateway.protocols.base import Headers, Protocol


@dataclass
class Incoming:
    method: str
    path: str
    query: bytes
    headers: Headers  # names lower-case, as ASGI delivers them
    body: bytes
    arrived: float = 0.0  # time.perf_counter() when the request came in (0: not measured)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Reply:
    """Status, headers and a body: bytes, or an async iterator of chunks (or frames).

    Whoever sends a reply calls ``finish`` once its last chunk went out and again, in a
    ``finally``, whatever happened: it closes the stream and runs ``close``, which settles
    the call. Settling before the last message reaches the client means a client that has
    its whole answer finds the ledger and its limits already updated; calling it again on
    every other way out means no call is left unsettled.
    """

    status: int
    headers: Headers
    body: bytes = b""
    stream: AsyncIterator | None = None
    close: Callable[[], Awaitable[None]] | None = None
    _finished: bool = False

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            if self.stream is not None:
                await self.stream.aclose()
        finally:
            if self.close is not None:
                await self.close()


def error_reply(protocol: Protocol, error: ProxyError) -> Reply:
    headers = [(b"content-type", b"application/json"), *error.response_headers()]
    return Reply(protocol.error_status(error), headers, protocol.error_body(error))


async def give_up(work: asyncio.Future, grace: float) -> None:
    """The client hung up before its answer was done. Let the call read on (sending nothing)
    for up to ``grace`` seconds, since the provider's own usage figure usually follows the
    last content within milliseconds; then stop it, and settlement estimates what was never
    reported (docs/operations.md, "Abandoned calls")."""
    if grace > 0:
        done, _ = await asyncio.wait({work}, timeout=grace)
        if done:
            return
    work.cancel()
