"""One upstream call, from the request the gateway forwards to the usage it records.

``Exchange.relay`` passes the provider's chunks (or websocket frames) to the client unchanged
while a tap reads usage on the side; ``Exchange.settle`` is the one way a call ends. However
it ends (answered to the end, client gone, upstream broke, cancelled before the answer, a
websocket frame on either path), settle runs exactly once: it prices what was used, swaps
the admission reservation for the actual cost and hands one usage record to the sink. It
cannot raise: a value it cannot read becomes a note on the record, and the reservation is
always released.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing import reservations
from billing.pricing import ModelPrice, PriceBook
from billing.records import UsageRecord
from llmproxy.core import metrics, tracing
from llmproxy.core.ids import new_id
from llmproxy.gateway import edge, upstream
from llmproxy.gateway.context import held_context
from llmproxy.gateway.kinds import ClientRequest, UpstreamRequest, kind_of
from llmproxy.gateway.limits import Ticket, free_ticket, limiter, state_headers
from llmproxy.gateway.messages import Incoming
from llmproxy.gateway.policy import Candidate, KeyPolicy, ProviderInfo
from llmproxy.gateway.protocols.base import (
    Endpoint,
    Headers,
    Protocol,
    RequestInfo,
    Tap,
    dump_json,
    parse_json_object,
)
from llmproxy.gateway.usage_sink import sink

log = logging.getLogger(__name__)

ZERO = Decimal(0)
# Request headers that can change an answer, so they are part of a shared request's identity.
SHARING_HEADERS = frozenset(
    {b"anthropic-version", b"anthropic-beta", b"openai-beta", b"x-codex-beta-features"}
)
# Status recorded for a call the client gave up before any answer came.
CLIENT_CLOSED = 499


def client_name(incoming: Incoming) -> str:
    agent = incoming.header(b"user-agent") or b""
    if agent.startswith(b"claude-cli/"):
        return "claude-code"
    originator = incoming.header(b"originator") or b""
    if originator.startswith(b"codex") or agent.startswith(b"codex"):
        return "codex"
    for marker, name in (
        (b"Anthropic/Python", "anthropic-python"),
        (b"Anthropic/JS", "anthropic-js"),
        (b"OpenAI/Python", "openai-python"),
        (b"OpenAI/JS", "openai-js"),
    ):
        if agent.startswith(marker):
            return name
    return agent.split(b"/", 1)[0].decode("latin-1")[:40] or "unknown"


def forwarded_headers(protocol: Protocol, client: Headers) -> Headers:
    """The client's headers that go to the provider: by allow-list, each value and all of
    them together within the limits (431 otherwise: never forwarded)."""
    headers = upstream.pick_headers(
        client, protocol.request_headers, protocol.request_header_prefixes
    )
    edge.check_forwarded(headers)
    return headers


def upstream_headers(
    protocol: Protocol,
    provider: ProviderInfo,
    client: Headers,
    forwarded: Headers | None = None,
) -> Headers:
    """The client's headers by allow-list, the protocol's defaults, the provider's extra
    headers; the provider's kind adds its credential (gateway/kinds).

    The client's own credential is never among them: it is not on any allow-list.
    ``forwarded``: the client's headers as ``forwarded_headers`` already picked them.
    """
    headers = list(forwarded) if forwarded is not None else forwarded_headers(protocol, client)
    present = {name for name, _ in headers}
    headers += [h for h in protocol.default_headers() if h[0] not in present]
    headers += [(k.encode(), v.encode()) for k, v in provider.extra_headers]
    return headers


_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def _epoch_ns(moment: float | None) -> int | None:
    """A time.perf_counter() reading as nanoseconds since the epoch (what OTLP wants)."""
    return None if moment is None else int(moment * 1e9) + _OFFSET_NS


class Exchange:
    """One upstream call: what it needs to forward, relay and settle."""

    def __init__(
        self,
        incoming: Incoming,
        protocol: Protocol,
        endpoint: Endpoint,
        policy: KeyPolicy,
        info: RequestInfo,
        candidates: list[Candidate],
        prices: PriceBook,
    ) -> None:
        self.incoming = incoming
        self.protocol = protocol
        self.endpoint = endpoint
        self.policy = policy
        self.info = info
        self.candidates = candidates  # who may serve it, in route order (forwarding.py)
        self.prices = prices
        self.attempts = 1  # upstream attempts this call took (failover, overload retries)
        self.use(candidates[0])
        self.ticket: Ticket | None = None
        # The client headers to forward, picked and checked by pipeline.prepare.
        self.forwarded: Headers | None = None
        self.request_id = new_id()
        self.created_at = datetime.now(UTC)
        self.started = incoming.arrived or time.perf_counter()
        self.sent_at: float | None = None  # when the first attempt went upstream
        self.prepared_at = time.perf_counter()  # authenticated, authorized, routed
        self.admitted_at: float | None = None
        self.relayed_at: float | None = None  # the answer's last byte went by
        self.first_byte: float | None = None
        self.tap: Tap = protocol.tap(False, info, endpoint)
        self.status = 0  # the provider's status, once it answered
        self.complete = False  # the upstream answer was read to its end
        self.relay_error = ""
        self.settled = False
        # False for calls that settle without a usage record of their own: a follower of an
        # identical request in flight (sharing.py) and a websocket warm-up, neither of
        # which generates anything.
        self.records_usage = True
        self.reached = True  # False once it is known the request never reached the provider
        # A provider's 413 raises forwarding.TooLarge instead of answering: the caller
        # compacts the history in chunks (compaction.py).
        self.splits_on_413 = False
        # Closes what the upstream answer holds open (an HTTP response, a websocket turn).
        self.release: Callable[[bool], Awaitable[None]] | None = None

    # --- the request ------------------------------------------------------------------------

    def use(self, candidate: Candidate) -> None:
        """Send the next attempt to ``candidate``: its provider, its name for the model,
        and that provider's price for it."""
        self.provider = candidate.provider
        self.upstream_model = candidate.upstream_model
        self.kind = kind_of(candidate.provider.kind)
        self.price = self.price_at(candidate)

    def price_at(self, candidate: Candidate) -> ModelPrice | None:
        kind, provider_id = self.protocol.provider_kind, candidate.provider.id
        return self.prices.find(candidate.upstream_model, kind, provider_id) or self.prices.find(
            self.info.model, kind, provider_id
        )

    def affinity(self) -> str:
        """What keeps a session on one provider: its session id, else the credential."""
        return self.info.session_id or self.policy.subject

    async def upstream_request(self) -> UpstreamRequest:
        protocol = self.protocol
        headers = upstream_headers(protocol, self.provider, self.incoming.headers, self.forwarded)
        # Identity encoding: the taps read the bytes they relay.
        headers.append((b"accept-encoding", b"identity"))
        body = self.incoming.body
        if self.upstream_model != self.info.model or protocol.rewrites(self.endpoint, self.info):
            # Only then is the whole body parsed and re-serialized; otherwise the client's
            # bytes go up unchanged.
            data = parse_json_object(body)
            self.rewrite(data)
            body = dump_json(data)
        request = ClientRequest(
            method=self.incoming.method,
            path=self.endpoint.upstream_path,
            query=self.incoming.query.decode("latin-1"),
            headers=headers,
            body=body,
            model=self.upstream_model,
            stream=self.info.stream,
        )
        return await self.kind.prepare(self.provider, request)

    def rewrite(self, data: dict) -> None:
        """The changes the gateway makes to a request (in place): the routed model name and
        the protocol's own (a refused hosted tool taken out, chat usage requested)."""
        self.protocol.rewrite(self.endpoint, data, self.info)
        if self.upstream_model != self.info.model:
            data["model"] = self.upstream_model

    def sharing_key(self) -> str:
        """Identical requests (same key, path, body and answer-changing headers) share it."""
        digest = hashlib.sha256(f"{self.policy.subject}\n{self.incoming.path}\n".encode())
        for name, value in self.incoming.headers:
            if name in SHARING_HEADERS:
                digest.update(name + b":" + value + b"\n")
        digest.update(self.incoming.body)
        return digest.hexdigest()

    # --- admission --------------------------------------------------------------------------

    async def admit(self) -> None:
        """Rate limits and concurrency for every call (each one is an upstream call made with
        the organisation's credential); a budget reservation for the billed ones."""
        metrics.ADMITTING.inc()
        try:
            await self._admit()
        finally:
            metrics.ADMITTING.dec()
        self.admitted_at = time.perf_counter()

    async def _admit(self) -> None:
        units = self.reservation_units()
        ticket = free_ticket(self.policy, units, time.time(), self.endpoint.billed)
        if ticket is not None:
            self.ticket = ticket  # nothing to count: no await, so nothing to protect
            return
        admission = asyncio.ensure_future(
            limiter().admit(self.policy, units, billed=self.endpoint.billed)
        )
        try:
            self.ticket = await asyncio.shield(admission)
        except asyncio.CancelledError:
            # The client left while admission ran: once it is done, release what it took
            # (a slot and a reservation in Redis), then go on being cancelled.
            with contextlib.suppress(Exception):
                self.ticket = await admission
            self.reached = False  # nothing was sent upstream
            await self.settle(CLIENT_CLOSED, error="cancelled before it was sent", partial=True)
            raise

    def declared(self) -> reservations.Declared:
        info = self.info
        return reservations.Declared(
            body_bytes=len(self.incoming.body),
            max_output_tokens=info.max_output_tokens,
            hosted_tools=[t for t in info.hosted_tools if t not in info.removed_tools],
            tool_limits=info.hosted_tool_limits,
            container_memory=info.container_memory,
            held_prompt_tokens=info.held_prompt_tokens,
        )

    def reservation_units(self) -> int:
        """The cost to hold against the call's budgets while it runs: at the dearest price of
        the providers it may fail over to."""
        if not self.policy.budgets or not self.endpoint.billed:
            return 0
        declared = self.declared()
        prices = {id(p): p for c in self.candidates if (p := self.price_at(c)) is not None}
        return max(
            (
                reservations.reserve(price, declared, expected=self.policy.reserve_expected)
                for price in prices.values()
            ),
            default=0,
        )

    # --- the answer ---------------------------------------------------------------------------

    def reply_headers(
        self, upstream_headers: Iterable[tuple[bytes, bytes]], status: int | None = None
    ) -> Headers:
        protocol = self.protocol
        headers = upstream.pick_headers(
            upstream_headers, protocol.response_headers, protocol.response_header_prefixes
        )
        headers.append((b"x-llmproxy-request-id", self.request_id.encode()))
        if status is not None:
            # The provider's own status: tells a gateway refusal from a provider failure.
            headers.append((b"x-llmproxy-upstream-status", str(status).encode()))
        if self.ticket is not None and self.ticket.policy.limited:
            now = time.time()
            headers += [
                (k.encode(), v.encode()) for k, v in state_headers(self.ticket, now).items()
            ]
        if self.info.removed_tools:
            removed = ",".join(self.info.removed_tools).encode()
            headers.append((b"x-llmproxy-removed-tools", removed))
        return headers

    async def relay(
        self, chunks: AsyncIterator[Any], broken: Callable[[str], Any] | None
    ) -> AsyncIterator[Any]:
        """The upstream's chunks (or frames), unchanged, as they arrive; the tap sees each.

        A provider that breaks off mid-answer is reported to the client with ``broken``'s
        error (an SSE error event, an error frame); the call then settles as partial.
        """
        try:
            async for chunk in chunks:
                if self.first_byte is None:
                    self.first_byte = time.perf_counter()
                self.tap.feed(chunk)
                if self.tap.final and not self.settled:
                    # The answer's usage is known: settle before the client sees its end.
                    self.complete = True
                    await self.settle()
                if self.tap.rewrites:
                    chunk = self.tap.rewrite(chunk)
                    if not chunk:
                        continue
                yield chunk
            self.complete = True
            self.relayed_at = time.perf_counter()
        except upstream.BROKEN as exc:
            self.relay_error = f"upstream stream broke: {type(exc).__name__}"
            if broken is not None:
                yield broken(
                    f"The connection to the provider failed mid-answer ({type(exc).__name__})."
                )

    async def close(self, status: int | None = None) -> None:
        """The sender is done with the answer, however that went: close it and settle
        (recorded with ``status`` when the client got another than the provider's)."""
        if self.release is not None:
            release, self.release = self.release, None
            try:
                await asyncio.shield(release(self.complete))
            except Exception:
                log.exception("closing the upstream answer of %s failed", self.request_id)
        await self.settle(status)

    # --- settlement -----------------------------------------------------------------------

    async def settle(self, status: int | None = None, *, error: str = "", partial=None) -> None:
        """The one way a call ends; runs once, never raises, survives cancellation."""
        if self.settled:
            return
        self.settled = True
        if self.ticket is None or self.ticket.released:
            # Nothing to give back to the limiter: settling takes no await, so a cancel
            # cannot cut it short and it needs no task of its own.
            settling = time.perf_counter()
            record, _, tokens = self._accounted(status, error, partial)
            self._hand_over(record, tokens, settling)
            return
        await asyncio.shield(self._settle(status, error, partial))

    async def _settle(self, status: int | None, error: str, partial: bool | None) -> None:
        settling = time.perf_counter()
        record, cost, tokens = self._accounted(status, error, partial)
        try:  # only reached with a ticket the limiter still holds (``settle``)
            await limiter().settle(self.ticket, cost, tokens)
        except Exception:
            # The slot and reservation then expire on their own (limits.HOLD_TTL).
            log.exception("the limiter could not settle %s", self.request_id)
        self._hand_over(record, tokens, settling)

    def _accounted(
        self, status: int | None, error: str, partial: bool | None
    ) -> tuple[UsageRecord, Decimal, int]:
        try:
            return self._account(status, error, partial)
        except Exception as exc:
            log.exception("usage of %s could not be read; recorded from its reservation", self)
            return self._unreadable(status, exc)

    def _hand_over(self, record: UsageRecord, tokens: int, settling: float) -> None:
        """The record to the sink, the call to /metrics and its trace."""
        if self.records_usage:
            sink.submit(record)
            self._observe(record, tokens)
            if tracing.enabled():
                self._trace(record, settling)

    def _trace(self, record: UsageRecord, settling: float) -> None:
        """The call as an OpenTelemetry span (GenAI semantic conventions)."""
        ns = _epoch_ns
        ended = time.perf_counter()
        operation = "chat" if self.info.kind != "count" else "count_tokens"
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.system": self.protocol.name,
            "gen_ai.request.model": self.info.model,
            "gen_ai.response.model": record.upstream_model,
            "gen_ai.request.max_tokens": self.info.max_output_tokens,
            "gen_ai.usage.input_tokens": record.input_tokens
            + record.cache_read_tokens
            + record.cache_write_tokens,
            "gen_ai.usage.output_tokens": record.output_tokens,
            "llmproxy.cost_usd": float(record.cost_usd),
            "llmproxy.provider": self.provider.name,
            "llmproxy.request_id": self.request_id,
            "llmproxy.client": record.client,
            "llmproxy.attempts": record.attempts,
            "llmproxy.estimated": record.estimated,
            "http.response.status_code": record.status,
        }
        stages = [
            ("authenticate", ns(self.started), ns(self.prepared_at)),
            ("admit", ns(self.prepared_at), ns(self.admitted_at)),
            ("upstream", ns(self.sent_at), ns(self.first_byte)),
            ("relay", ns(self.first_byte), ns(self.relayed_at or settling)),
            ("settle", ns(settling), ns(ended)),
        ]
        name = f"{operation} {self.info.model}"
        tracing.record_call(name, ns(self.started), ns(ended), attributes, stages)

    def _observe(self, record: UsageRecord, tokens: int) -> None:
        """The call on /metrics (bounded labels: the price pattern names the model)."""
        try:
            provider, protocol = self.provider.name, self.protocol.name
            model = self.price.pattern if self.price is not None else "unpriced"
            team = self.policy.team_name or "none"
            child = metrics.child
            child(
                metrics.REQUESTS, self.endpoint.upstream_path, protocol,
                metrics.client_label(record.client), provider, model, str(record.status),
            ).inc()  # fmt: skip
            child(metrics.SPEND, team, model).inc(float(record.cost_usd))
            for kind, count in (
                ("input", record.input_tokens), ("output", record.output_tokens),
                ("cache_read", record.cache_read_tokens),
                ("cache_write", record.cache_write_tokens),
            ):  # fmt: skip
                if count:
                    child(metrics.TOKENS, team, model, kind).inc(count)
            if self.first_byte is not None:
                ttfb = self.first_byte - self.started
                child(metrics.TTFB_SECONDS, protocol, provider).observe(ttfb)
            if self.sent_at is not None:
                took = time.perf_counter() - self.sent_at
                child(metrics.UPSTREAM_SECONDS, provider).observe(took)
        except Exception:  # metrics never cost a call its settlement
            log.exception("metrics of %s not recorded", self.request_id)

    def _account(
        self, status: int | None, error: str, partial: bool | None
    ) -> tuple[UsageRecord, Decimal, int]:
        self.tap.finish()
        if self.estimable():
            # Ended before its usage event: the provider still bills what it generated.
            self.tap.estimate(reservations.prompt_tokens(self.declared()))
        usage = self.tap.usage
        if self.tap.response_id:
            # What a call continuing this response will make the provider read first.
            context = usage.prompt_tokens + usage.output_tokens
            held_context.remember(self.policy.subject, self.tap.response_id, context)
        cost = ZERO
        if self.endpoint.billed and self.price is not None:
            cost = self.price.cost(usage)
        elif self.endpoint.billed and usage.reported:
            error = error or f"no price for model {self.upstream_model!r}: recorded at $0"
        if not error and not self.complete:
            error = self.relay_error or "client disconnected"
        record = self.record(
            status=self.status if status is None else status,
            cost=cost,
            partial=not self.complete if partial is None else partial,
            error=error or self.relay_error or self.tap.error,
        )
        return record, cost, usage.total_tokens

    def estimable(self) -> bool:
        """Did the provider (probably) generate something whose usage it never reported?
        A billed call that reached it and ended, or was given up, before a final usage
        event: answered 2xx, or not answered yet. Error answers are not billed."""
        return (
            self.endpoint.billed
            and self.reached
            and not self.tap.final
            and (self.status == 0 or 200 <= self.status < 300)
        )

    def _unreadable(self, status: int | None, exc: Exception) -> tuple[UsageRecord, Decimal, int]:
        """A record that needs nothing the failure may have broken; charged its reservation,
        the most the call was allowed to cost."""
        held = self.ticket.reserved_units if self.ticket is not None else 0
        cost = reservations.from_units(held)
        values = self._identity(self.status if status is None else status)
        values.update(
            input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0,
            cache_write_1h_tokens=0, reasoning_tokens=0, tool_calls={}, cost_usd=str(cost),
            partial=not self.complete, estimated=True,
            error=f"usage unreadable ({type(exc).__name__}: {exc}); charged its reservation",
        )  # fmt: skip
        return UsageRecord.build(**values), cost, 0

    def record(self, *, status: int, cost: Decimal, partial: bool, error: str) -> UsageRecord:
        usage = self.tap.usage
        values = self._identity(status)
        values.update(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            tool_calls={**usage.tool_calls, **usage.containers},
            cost_usd=str(cost),
            partial=partial,
            estimated=usage.estimated,
            error=error,
        )
        return UsageRecord.build(**values)

    def _identity(self, status: int) -> dict[str, Any]:
        ended = time.perf_counter()
        first = self.first_byte
        return {
            "request_id": self.request_id,
            "created_at": self.created_at.isoformat(),
            "api_key_id": self.policy.key_id,
            "team_id": self.policy.team_id,
            "person_id": self.policy.person_id,
            "credential": self.policy.credential,
            "provider_id": self.provider.id,
            "model": self.info.model,
            "upstream_model": self.tap.upstream_model or self.upstream_model,
            "endpoint": self.incoming.path,
            "client": client_name(self.incoming),
            "session_id": self.info.session_id,
            "agent_id": self.info.agent_id,
            "status": status,
            "kind": self.info.kind,
            "attempts": self.attempts,
            "latency_ms": int((ended - self.started) * 1000),
            "ttft_ms": int((first - self.started) * 1000) if first else None,
        }

    def __repr__(self) -> str:
        return f"<Exchange {self.request_id} {self.endpoint.upstream_path} {self.info.model!r}>"
