"""Limits at the edge: what a client can make a worker hold, and for how long.

The key is checked from the headers before any of the body is read; these bound the rest:
the size and count of the headers, the time a body may take to arrive, and the body bytes a
worker receives at once (docs/operations.md, "Limits at the edge"). The server itself
(``llmproxy.server``) bounds what the application never sees: a request head that does not
end, or ends too late.
"""

from __future__ import annotations

import asyncio
import threading

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.protocols.base import Headers

# How long a request waits for room under LLMPROXY_MAX_BODY_BYTES_IN_FLIGHT before its 503.
IN_FLIGHT_WAIT_SECONDS = 1.0


class Limits:
    """The settings read on every request, as plain attributes: a ``django.conf.settings``
    attribute costs a Python-level ``__getattribute__`` each time. Read again whenever a
    setting changes (tests override them)."""

    def __init__(self) -> None:
        self.load()

    def load(self) -> None:
        self.max_headers = settings.LLMPROXY_MAX_HEADERS
        self.max_header_bytes = settings.LLMPROXY_MAX_HEADER_BYTES
        self.max_body_bytes = settings.LLMPROXY_MAX_BODY_BYTES
        self.body_timeout = settings.LLMPROXY_BODY_TIMEOUT_SECONDS
        self.in_flight = settings.LLMPROXY_MAX_BODY_BYTES_IN_FLIGHT
        self.forwarded_each = settings.LLMPROXY_MAX_FORWARDED_HEADER_BYTES
        self.forwarded_total = settings.LLMPROXY_MAX_FORWARDED_HEADERS_TOTAL_BYTES


limits = Limits()


@receiver(setting_changed)
def _setting_changed(setting: str, **kwargs) -> None:
    if setting.startswith("LLMPROXY_"):
        limits.load()


CLOSE = (b"connection", b"close")
# A request answered before its body was read (a missing or bad key, a refusal the headers
# decide, no room in flight) leaves the connection open: the server reads the rest of the
# body and throws it away, so the client (still sending) gets to read the answer; under
# ``llmproxy serve`` that rest must arrive within LLMPROXY_BODY_TIMEOUT_SECONDS and
# LLMPROXY_MAX_BODY_BYTES, else the connection is closed. These answers instead close the
# connection at once: the body is too slow, too big, or the request head itself is.
CLOSES = frozenset({ErrorKind.REQUEST_TIMEOUT, ErrorKind.REQUEST_TOO_LARGE, ErrorKind.INTERNAL})


def header_error(target: int, headers: Headers) -> ProxyError | None:
    """Too many headers, or too many bytes in them (names, values and the request target)?"""
    limit = limits.max_headers
    if len(headers) > limit:
        return ProxyError(
            ErrorKind.HEADERS_TOO_LARGE,
            f"The request has {len(headers)} headers; at most {limit} are accepted.",
        )
    size = target
    for name, value in headers:
        size += len(name) + len(value)
    limit = limits.max_header_bytes
    if size > limit:
        return ProxyError(
            ErrorKind.HEADERS_TOO_LARGE,
            f"The request's headers and target are {size} bytes; at most {limit} are accepted.",
        )
    return None


def scope_header_error(scope) -> ProxyError | None:
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return header_error(target, scope["headers"])


def check_forwarded(headers: Headers) -> None:
    """The client headers about to go to a provider: each value and all together are capped,
    so a client cannot make the gateway send the provider what it would not take itself."""
    each = limits.forwarded_each
    total = 0
    for name, value in headers:
        if len(value) > each:
            raise ProxyError(
                ErrorKind.HEADERS_TOO_LARGE,
                f"The header {name.decode('latin-1')!r} is {len(value)} bytes; the gateway "
                f"forwards at most {each}.",
            )
        total += len(name) + len(value)
    limit = limits.forwarded_total
    if total > limit:
        raise ProxyError(
            ErrorKind.HEADERS_TOO_LARGE,
            f"The headers to forward are {total} bytes together; the gateway forwards at most "
            f"{limit}.",
        )


def declared_length(headers: Headers) -> int | None:
    """The body's content-length; None when it is chunked (or, for a malformed value, when
    the server will have refused the request anyway)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def has_body(headers: Headers) -> bool:
    """Will the client send a body (so an early answer must close the connection)?"""
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class InFlight:
    """Body bytes this worker process is receiving, against a cap.

    A request takes its declared length before its body is read (a chunked one takes its
    bytes as they come) and gives it back once the body is whole and handed to the pipeline,
    or abandoned. Over the cap a request waits up to ``IN_FLIGHT_WAIT_SECONDS`` for room,
    then gets a 503. Process-wide (a worker normally runs one loop; the tests run several).
    """

    def __init__(self) -> None:
        self.used = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def _try_take(self, size: int, limit: int) -> bool:
        with self._lock:
            if self.used + size > limit:
                return False
            self.used += size
            return True

    async def take(self, size: int) -> None:
        limit = limits.in_flight
        if size <= 0 or self._try_take(size, limit):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IN_FLIGHT_WAIT_SECONDS
        while True:
            waiter = loop.create_future()
            with self._lock:
                if self.used + size <= limit:
                    self.used += size
                    return
                self._waiters.append((loop, waiter))
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                with self._lock:
                    self._waiters = [w for w in self._waiters if w[1] is not waiter]
                raise ProxyError(
                    ErrorKind.OVERLOADED,
                    "This gateway worker is receiving too many request bodies at once; "
                    "try again shortly.",
                    retry_after=1,
                ) from None

    def release(self, size: int) -> None:
        if size <= 0:
            return
        with self._lock:
            self.used -= size
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


in_flight = InFlight()


class _Deadline:
    """Cancels the task it was set for, and says so (asyncio.timeout does the same at four
    times the cost per request)."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


async def read_body(receive, length: int | None) -> bytes | None:
    """The whole body, within LLMPROXY_BODY_TIMEOUT_SECONDS and the in-flight cap; None when
    the client hung up first. Raises ProxyError (408, 413, 503) for the client to see."""
    limit = limits.max_body_bytes
    parts: list[bytes] = []
    size = held = 0
    deadline = _Deadline(asyncio.current_task())
    timer = asyncio.get_running_loop().call_later(limits.body_timeout, deadline)
    try:
        if length:
            await in_flight.take(length)
            held = length
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProxyError(
                    ErrorKind.REQUEST_TOO_LARGE, f"The request body is larger than {limit} bytes."
                )
            if size > held:  # chunked: take the bytes as they come
                await in_flight.take(size - held)
                held = size
            parts.append(chunk)
            if not message.get("more_body"):
                return parts[0] if len(parts) == 1 else b"".join(parts)
    except asyncio.CancelledError:
        if not deadline.fired:
            raise
        deadline.task.uncancel()
        raise ProxyError(
            ErrorKind.REQUEST_TIMEOUT,
            f"The request body did not arrive within {limits.body_timeout:g} seconds.",
        ) from None
    finally:
        timer.cancel()
        in_flight.release(held)
