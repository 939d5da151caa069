"""Forward a call to its provider: failover before the first byte, overload retries, and the
one table of what the client gets for each provider status.

A call may have several candidates (gateway/failover.py orders them). A connection error,
or a 429, 500, 502, 503, 504 or 529 before any byte reached the client moves to the next;
when every candidate failed, 429/503/529 answers are retried with jittered backoff while
LLMPROXY_RETRY_SECONDS lasts, honouring a Retry-After up to LLMPROXY_RETRY_AFTER_PASS_ON
(a longer one is passed to the client, which would give up waiting). After the first byte
nothing is retried: a stream that breaks gets the protocol's error event. However many
attempts a call takes, it is admitted once and settled once; failed attempts before the
first byte cost nothing and are counted on the usage record (``attempts``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import aiohttp
import httpx
from django.conf import settings

from llmproxy.core import metrics
from llmproxy.gateway import failover, upstream
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.exchange import CLIENT_CLOSED, Exchange
from llmproxy.gateway.kinds import CredentialUnreachable
from llmproxy.gateway.messages import Reply, error_reply

log = logging.getLogger(__name__)

# Provider statuses that another attempt may fix, before the first byte.
RETRYABLE = frozenset({429, 500, 502, 503, 504, 529})
# ...and those worth waiting for when every candidate gave one (the others are faults).
OVERLOAD = frozenset({429, 503, 529})
BUFFER_LIMIT = 8 * 1024 * 1024


@dataclass
class Failure:
    """An attempt that failed before its first byte: what the client would get for it."""

    reply: Reply
    status: int  # the provider's status (0: no answer)
    note: str
    retry_after: float | None = None
    reached: bool = False  # the provider may have seen (and billed) the request


class TooLarge(Exception):
    """The provider refused a body as too large (413) for a call that handles that itself
    (``Exchange.splits_on_413``: a Codex compaction). The call is not settled yet."""

    def __init__(self, reply: Reply, size: int) -> None:
        super().__init__(f"HTTP 413 for a body of {size} bytes")
        self.reply = reply  # what the client would get for it
        self.size = size  # the body the provider refused


def buffered(response: httpx.Response) -> bool:
    """Is this a non-streamed answer small enough to read whole before replying?"""
    if upstream.header(response, b"content-type").startswith("text/event-stream"):
        return False
    length = upstream.header(response, b"content-length")
    return length.isdigit() and int(length) <= BUFFER_LIMIT


def retry_after(response: httpx.Response) -> float | None:
    value = upstream.header(response, b"retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


async def forward(exchange: Exchange) -> Reply:
    """Send the call to its candidates in order until one answers (see the module's doc)."""
    try:
        return await _forward(exchange)
    except TooLarge:
        raise  # the caller compacts in chunks and settles the call (gateway/compaction.py)
    except BaseException:
        # Cancelled (client gone) or a bug before an answer was handed on: settle it.
        await exchange.settle(CLIENT_CLOSED, error="cancelled before reply", partial=True)
        raise


async def _forward(exchange: Exchange) -> Reply:
    deadline = time.monotonic() + settings.LLMPROXY_RETRY_SECONDS
    order = failover.order(exchange.candidates, exchange.affinity())
    failures: list[Failure] = []
    for round_ in range(100):
        tried = False
        for candidate in order:
            if not failover.breaker.available(candidate.provider.id):
                continue
            tried = True
            exchange.use(candidate)
            outcome = await attempt(exchange)
            if isinstance(outcome, Reply):
                failover.breaker.succeeded(candidate.provider.id)
                return outcome
            failover.breaker.failed(candidate.provider.id)
            failures.append(outcome)
            exchange.attempts += 1
        if not tried:
            return await _give_up(exchange, failures, everything_open=True)
        last = failures[-1]
        wait = _backoff(round_, last.retry_after)
        if (
            last.status not in OVERLOAD
            or (last.retry_after or 0) > settings.LLMPROXY_RETRY_AFTER_PASS_ON
            or time.monotonic() + wait > deadline
        ):
            return await _give_up(exchange, failures)
        await asyncio.sleep(wait)
    return await _give_up(exchange, failures)


def _backoff(round_: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return retry_after
    return min(4.0, 0.25 * 2**round_) * random.uniform(0.5, 1.5)


async def _give_up(exchange: Exchange, failures: list[Failure], everything_open=False) -> Reply:
    """No candidate answered: the client gets the last failure's answer."""
    if everything_open or not failures:
        error = ProxyError(
            ErrorKind.UPSTREAM_BUSY,
            "Every provider for this model failed recently; try again shortly.",
            retry_after=int(settings.LLMPROXY_BREAKER_SECONDS) or 1,
        )
        exchange.reached = False
        await exchange.settle(error.kind.status, error=error.message, partial=False)
        return error_reply(exchange.protocol, error)
    last = failures[-1]
    exchange.reached = last.reached
    notes = "; ".join(f.note for f in failures)[:500]
    await exchange.settle(last.reply.status, error=notes, partial=False)
    return last.reply


async def attempt(exchange: Exchange) -> Reply | Failure:
    """One try at one provider: a Reply to hand on, or a Failure another try may fix."""
    protocol, provider = exchange.protocol, exchange.provider
    try:
        request = await exchange.upstream_request()
    except CredentialUnreachable as error:  # a token endpoint down: like a connection error
        return Failure(error_reply(protocol, error), 0, f"{provider.name}: {error.message}")
    except ProxyError as error:
        exchange.reached = False
        await exchange.settle(error.kind.status, error=error.message, partial=False)
        return error_reply(protocol, error)
    if exchange.sent_at is None:
        exchange.sent_at = time.perf_counter()
        took = exchange.sent_at - exchange.started
        metrics.child(metrics.GATEWAY_SECONDS, protocol.name).observe(took)
    try:
        response = await upstream.get().send(request.method, request.url, request.headers,
                                             request.body)  # fmt: skip
    except (httpx.HTTPError, aiohttp.ClientError) as exc:
        error = unreachable(exchange, exc)
        # A provider that took the request and then timed out may have billed for it.
        reply = error_reply(protocol, error)
        note = f"{provider.name}: {upstream.describe(exc)}"
        return Failure(reply, 0, note, reached=error.kind is ErrorKind.UPSTREAM_TIMEOUT)
    status = response.status_code
    if status >= 400:
        exchange.status = status  # an error answer: nothing generated, nothing to estimate
        body = await _error_body(response)
        reply = provider_error(exchange, response, body)
        said = exchange.kind.error_message(body)
        note = f"{provider.name} answered HTTP {status}" + (f": {said}" if said else "")
        if status == 413 and exchange.splits_on_413:
            raise TooLarge(reply, len(request.body))
        if status in RETRYABLE:
            return Failure(reply, status, note, retry_after(response))
        await exchange.settle(reply.status, error=note, partial=False)
        return reply
    return await answer(exchange, response)


async def _error_body(response: httpx.Response) -> bytes:
    try:
        return (await response.aread())[:65536]
    except upstream.BROKEN:
        return b""
    finally:
        await response.aclose()


async def answer(exchange: Exchange, response: httpx.Response) -> Reply:
    """A 2xx answer: relayed as it comes (streams) or read whole (JSON of known length)."""
    protocol, kind = exchange.protocol, exchange.kind
    exchange.status = response.status_code

    async def release(complete: bool) -> None:
        await response.aclose()

    exchange.release = release
    headers = exchange.reply_headers(kind.answer_headers(response), response.status_code)
    streaming = kind.streaming(response)
    exchange.tap = protocol.tap(streaming, exchange.info, exchange.endpoint)
    broken = protocol.stream_error_event if streaming else None
    relayed = exchange.relay(kind.answer(response), broken)
    if streaming or not buffered(response):
        return Reply(response.status_code, headers, stream=relayed, close=exchange.close)
    # A JSON answer of known size goes out in one message with its length, as the provider
    # sent it: one write to the client instead of a chunk per read plus a terminator.
    try:
        body = b"".join([chunk async for chunk in relayed])
    except BaseException:
        await exchange.close()  # the client left while the answer was read: settle it
        raise
    if not exchange.complete:
        error = ProxyError(
            ErrorKind.UPSTREAM_UNAVAILABLE,
            f"The connection to provider {exchange.provider.name!r} broke mid-answer.",
        )
        await exchange.close(error.kind.status)
        return error_reply(protocol, error)
    return Reply(response.status_code, headers, body, close=exchange.close)


def unreachable(exchange: Exchange, exc: Exception) -> ProxyError:
    name = exchange.provider.name
    if isinstance(exc, httpx.HTTPError) and upstream.is_timeout(exc):
        return ProxyError(ErrorKind.UPSTREAM_TIMEOUT, f"Provider {name!r} did not answer in time.")
    return ProxyError(
        ErrorKind.UPSTREAM_UNAVAILABLE,
        f"Provider {name!r} could not be reached ({type(exc).__name__}).",
    )


# What the client gets for a provider's error status: the error kind it becomes, or None to
# pass the provider's own answer on (its status, body and headers, in the protocol's shape).
STATUS_TABLE: dict[int, ErrorKind | None] = {
    401: ErrorKind.UPSTREAM_CREDENTIAL,  # the gateway's credential, never the client's
    403: ErrorKind.UPSTREAM_CREDENTIAL,  # the organisation's account may not: said as is
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.UPSTREAM_TIMEOUT,
    413: ErrorKind.REQUEST_TOO_LARGE,
    429: None,  # with retry-after and the rate-limit headers
    500: ErrorKind.UPSTREAM_UNAVAILABLE,
    502: ErrorKind.UPSTREAM_UNAVAILABLE,
    503: ErrorKind.UPSTREAM_BUSY,
    504: ErrorKind.UPSTREAM_TIMEOUT,
    529: ErrorKind.UPSTREAM_OVERLOADED,  # Anthropic clients retry it; OpenAI ones get 503
}


def provider_error(exchange: Exchange, response: httpx.Response, body: bytes) -> Reply:
    """The client's answer for a provider's error status (STATUS_TABLE; docs/providers.md).

    A 4xx the table does not name is the client's own mistake (a bad request): passed on as
    the provider wrote it when the provider speaks the client's protocol natively, else
    restated in the protocol's shape. Every answer carries x-llmproxy-upstream-status.
    """
    status = response.status_code
    kind = exchange.kind
    said = kind.error_message(body)
    mapped = STATUS_TABLE.get(status, ErrorKind.UPSTREAM_UNAVAILABLE if status >= 500 else None)
    if mapped is None and kind.native_errors:
        headers = exchange.reply_headers(kind.answer_headers(response), status)
        return Reply(status, headers, body)
    name = exchange.provider.name
    if mapped is None:
        # Restated for a provider that speaks another shape (Bedrock's, Google's).
        restated = ErrorKind.RATE_LIMIT if status == 429 else ErrorKind.INVALID_REQUEST
        error = ProxyError(restated, said or f"HTTP {status}")
        error.status = status
    elif status == 401:
        error = ProxyError(
            mapped,
            f"The gateway's credential for provider {name!r} was rejected (HTTP 401). Your "
            "own key is fine; an admin must fix the provider's API key.",
        )
    elif status == 403:
        error = ProxyError(
            mapped,
            f"Provider {name!r} refused the gateway's request (HTTP 403)"
            + (f": {said}" if said else ".")
            + " Your own key is fine; an admin must check the provider account's access.",
        )
    else:
        error = ProxyError(
            mapped, f"Provider {name!r} answered HTTP {status}" + (f": {said}" if said else ".")
        )
    seconds = retry_after(response)
    if seconds is not None:
        error.retry_after = int(seconds)
    reply = error_reply(exchange.protocol, error)
    if error.status is not None:  # a restated 4xx keeps the provider's status
        reply.status = error.status
    reply.headers = [*reply.headers, *_passed_headers(exchange, response)]
    return reply


def _passed_headers(exchange: Exchange, response: httpx.Response) -> list[tuple[bytes, bytes]]:
    kept = upstream.pick_headers(
        exchange.kind.answer_headers(response),
        exchange.protocol.response_headers - {b"content-type", b"retry-after", b"x-should-retry"},
        exchange.protocol.response_header_prefixes,
    )
    return [*kept, (b"x-llmproxy-upstream-status", str(response.status_code).encode())]
