"""The proxy pipeline: authenticate → authorize → admit → forward → relay → settle.

Plain async code with no Channels types: it takes an ``Incoming`` request and returns a
``Reply`` whose body is bytes or an async iterator of the upstream's chunks, unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import orjson
from django.conf import settings

from llmproxy.core.ids import new_id
from llmproxy.gateway import sharing, upstream
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.limits import Ticket, limiter, state_headers, to_units
from llmproxy.gateway.policy import Catalog, KeyPolicy, ProviderInfo, policies
from llmproxy.gateway.protocols.base import (
    Endpoint,
    Headers,
    Protocol,
    RequestInfo,
    parse_json_object,
)
from llmproxy.gateway.usage_sink import sink

log = logging.getLogger(__name__)

ZERO = Decimal(0)
# Request headers that can change an answer, so they are part of a shared request's identity.
SHARING_HEADERS = frozenset(
    {b"anthropic-version", b"anthropic-beta", b"openai-beta", b"x-codex-beta-features"}
)


@dataclass
class Incoming:
    method: str
    path: str
    query: bytes
    headers: Headers  # names lower-case, as ASGI delivers them
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    # Whoever sends the reply calls this at the end in any case: if the stream was never
    # started (the client left first), it still closes the upstream answer and settles.
    close: Callable[[], Awaitable[None]] | None = None

    async def finish(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        if self.close is not None:
            await self.close()


def error_reply(protocol: Protocol, error: ProxyError) -> Reply:
    headers = [(b"content-type", b"application/json"), *error.response_headers()]
    return Reply(protocol.error_status(error), headers, protocol.error_body(error))


# --- authenticate and authorize ------------------------------------------------------------


def presented_keys(incoming: Incoming) -> list[str]:
    """Keys from x-api-key and Authorization: Bearer (Claude Code may send both)."""
    found = []
    api_key = incoming.header(b"x-api-key")
    if api_key:
        found.append(api_key.decode("latin-1").strip())
    authorization = incoming.header(b"authorization")
    if authorization and authorization[:7].lower() == b"bearer ":
        found.append(authorization[7:].decode("latin-1").strip())
    return found


async def authenticate(incoming: Incoming) -> KeyPolicy:
    secrets = presented_keys(incoming)
    if not secrets:
        raise ProxyError(
            ErrorKind.AUTHENTICATION,
            "No API key: send your llmproxy key in x-api-key or Authorization: Bearer.",
        )
    for secret in secrets:
        policy = await policies.key(secret)
        if policy is not None:
            break
    else:
        raise ProxyError(ErrorKind.AUTHENTICATION, "Invalid API key.")
    if policy.revoked:
        raise ProxyError(ErrorKind.AUTHENTICATION, "This API key has been revoked.")
    if policy.expired(time.time()):
        raise ProxyError(ErrorKind.AUTHENTICATION, "This API key has expired.")
    return policy


def authorize(policy: KeyPolicy, protocol: Protocol, endpoint: Endpoint, info: RequestInfo) -> None:
    if not policy.endpoint_allowed(endpoint.upstream_path):
        raise ProxyError(ErrorKind.PERMISSION, f"This key may not call {endpoint.upstream_path}.")
    if not policy.model_allowed(info.model):
        raise ProxyError(ErrorKind.PERMISSION, f"This key may not use the model {info.model!r}.")
    if info.background and not policy.allow_background:
        raise ProxyError(
            ErrorKind.PERMISSION, "This key may not start background responses (background: true)."
        )
    refused = [tool for tool in info.hosted_tools if not policy.hosted_tool_allowed(tool)]
    if not refused:
        return
    if protocol.removes_refused_tools and info.forced_tool not in refused:
        # Codex declares web_search on every request: drop it rather than fail every turn.
        info.removed_tools = refused
        return
    raise ProxyError(
        ErrorKind.PERMISSION,
        f"This key may not use the hosted tool {refused[0]!r}; ask an admin to allow it.",
    )


def route(catalog: Catalog, protocol: Protocol, policy: KeyPolicy, model: str):
    found = catalog.route(model, protocol.provider_kind)
    if found is None:
        raise ProxyError(
            ErrorKind.NOT_FOUND, f"No {protocol.provider_kind} provider serves model {model!r}."
        )
    provider, upstream_model = found
    price = catalog.prices.find(upstream_model) or catalog.prices.find(model)
    if price is None and policy.budgets:
        # A budget cannot be kept for a model whose cost is unknown: refuse, don't guess.
        raise ProxyError(
            ErrorKind.PERMISSION,
            f"Model {model!r} has no price, so budgeted keys may not use it yet; "
            "an admin must add its price.",
        )
    return provider, upstream_model, price


# --- forward and relay -------------------------------------------------------------------


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


def upstream_headers(protocol: Protocol, provider: ProviderInfo, client: Headers) -> Headers:
    """The client's headers by allow-list, the protocol's defaults, the provider's credential.

    The client's own credential is never among them: it is not on any allow-list.
    """
    headers = upstream.pick_headers(
        client, protocol.request_headers, protocol.request_header_prefixes
    )
    present = {name for name, _ in headers}
    headers += [h for h in protocol.default_headers() if h[0] not in present]
    headers += [(k.encode(), v.encode()) for k, v in provider.extra_headers]
    headers += protocol.credential_headers(provider)
    return headers


class Exchange:
    """One upstream call: what it needs to forward, relay and settle."""

    def __init__(
        self,
        incoming: Incoming,
        protocol: Protocol,
        endpoint: Endpoint,
        policy: KeyPolicy,
        info: RequestInfo,
        provider: ProviderInfo,
        upstream_model: str,
        price,
    ) -> None:
        self.incoming = incoming
        self.protocol = protocol
        self.endpoint = endpoint
        self.policy = policy
        self.info = info
        self.provider = provider
        self.upstream_model = upstream_model
        self.price = price
        self.ticket: Ticket | None = None
        self.request_id = new_id()
        self.created_at = datetime.now(UTC)
        self.started = time.perf_counter()
        self.first_byte: float | None = None
        self.tap = protocol.tap(False, info, endpoint)
        self.settled = False
        self.complete = False  # the upstream answer was read to its end
        self.relay_error = ""

    def upstream_request(self) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
        protocol, provider = self.protocol, self.provider
        url = provider.base_url + self.endpoint.upstream_path
        if self.incoming.query:
            url += "?" + self.incoming.query.decode("latin-1")
        headers = upstream_headers(protocol, provider, self.incoming.headers)
        # Identity encoding: the taps read the bytes they relay.
        headers.append((b"accept-encoding", b"identity"))
        body = self.incoming.body
        if self.upstream_model != self.info.model or protocol.rewrites(self.endpoint, self.info):
            # Only then is the whole body parsed and re-serialized; otherwise the client's
            # bytes go up unchanged.
            data = parse_json_object(body)
            self.rewrite(data)
            body = orjson.dumps(data)
        return url, headers, body

    def rewrite(self, data: dict) -> None:
        """The changes the gateway makes to a request (in place): the routed model name and
        the protocol's own (a refused hosted tool taken out, chat usage requested)."""
        self.protocol.rewrite(self.endpoint, data, self.info)
        if self.upstream_model != self.info.model:
            data["model"] = self.upstream_model

    async def admit(self) -> None:
        if self.endpoint.billed:
            self.ticket = await limiter().admit(self.policy, self.reservation_units())

    def reservation_units(self) -> int:
        """The cost to hold against the key's and team's budgets while this call runs."""
        if self.price is None or not self.policy.budgets:
            return 0
        # Never fewer tokens than bytes / 3: about what JSON-wrapped text of any script costs.
        prompt = len(self.incoming.body) // 3
        output = (
            self.info.max_output_tokens
            or self.price.default_max_output_tokens
            or settings.LLMPROXY_DEFAULT_MAX_OUTPUT_TOKENS
        )
        tokens = self.price.reservation(prompt, output, self.policy.reserve_expected)
        return to_units(tokens + self.hosted_tool_reservation())

    def hosted_tool_reservation(self) -> Decimal:
        """Hosted tool calls the request may make: its max_uses, or a configured number."""
        info = self.info
        calls, containers = {}, {}
        for tool in info.hosted_tools:
            if tool in info.removed_tools:
                continue
            if tool == "code_interpreter":
                containers[info.container_memory] = 1  # one container per response
            else:
                calls[tool] = info.hosted_tool_limits.get(
                    tool, settings.LLMPROXY_RESERVED_TOOL_CALLS
                )
        if not calls and not containers:
            return ZERO
        return self.price.tool_reservation(calls, containers)

    def sharing_key(self) -> str:
        """Identical requests (same key, path, body and answer-changing headers) share it."""
        digest = hashlib.sha256(f"{self.policy.key_id}\n{self.incoming.path}\n".encode())
        for name, value in self.incoming.headers:
            if name in SHARING_HEADERS:
                digest.update(name + b":" + value + b"\n")
        digest.update(self.incoming.body)
        return digest.hexdigest()

    def reply_headers(self, response: httpx.Response) -> Headers:
        protocol = self.protocol
        headers = upstream.pick_headers(
            response.headers.raw, protocol.response_headers, protocol.response_header_prefixes
        )
        headers.append((b"x-llmproxy-request-id", self.request_id.encode()))
        if self.ticket is not None and self.ticket.policy.limited:
            now = time.time()
            headers += [
                (k.encode(), v.encode()) for k, v in state_headers(self.ticket, now).items()
            ]
        if self.info.removed_tools:
            removed = ",".join(self.info.removed_tools).encode()
            headers.append((b"x-llmproxy-removed-tools", removed))
        return headers

    async def relay(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The upstream's chunks, unchanged, as they arrive; the tap sees each on the side.

        It settles when the answer ends, before the sender's last message: once a client has
        its whole answer, the ledger already holds the call's actual cost.
        """
        streaming = response.headers.get("content-type", "").startswith("text/event-stream")
        self.tap = self.protocol.tap(streaming, self.info, self.endpoint)
        try:
            async for chunk in response.aiter_raw():
                if self.first_byte is None:
                    self.first_byte = time.perf_counter()
                self.tap.feed(chunk)
                if self.tap.rewrites:
                    chunk = self.tap.rewrite(chunk)
                    if not chunk:
                        continue
                yield chunk
            self.complete = True
        except httpx.HTTPError as exc:
            self.relay_error = f"upstream stream broke: {type(exc).__name__}"
            if streaming:
                # The client sees a protocol error event; Claude Code then retries unstreamed.
                yield self.protocol.stream_error_event(
                    f"The connection to the provider failed mid-stream ({type(exc).__name__})."
                )
        finally:
            # On a client disconnect this cancels the upstream call and settles what was seen.
            await self.conclude(response)

    async def conclude(self, response: httpx.Response) -> None:
        """The answer ended, broke or was given up: close it upstream and settle once."""
        if self.settled:
            return
        await response.aclose()
        error = self.relay_error or ("" if self.complete else "client disconnected")
        await asyncio.shield(
            self.settle(response.status_code, partial=not self.complete, error=error)
        )

    async def settle(self, status: int, *, partial: bool = False, error: str = "") -> None:
        if self.settled:
            return
        self.settled = True
        self.tap.finish()
        usage = self.tap.usage
        cost = ZERO
        if self.endpoint.billed and self.price is not None:
            cost = self.price.cost(usage)
        elif self.endpoint.billed and usage.reported:
            error = error or f"no price for model {self.upstream_model!r}: recorded at $0"
        if self.ticket is not None:
            await limiter().settle(self.ticket, cost, usage.total_tokens)
        sink.submit(self.event(status, cost, partial, error or self.tap.error))

    def event(self, status: int, cost: Decimal, partial: bool, error: str) -> dict:
        usage = self.tap.usage
        ended = time.perf_counter()
        return {
            "request_id": self.request_id,
            "api_key_id": self.policy.key_id,
            "team_id": self.policy.team_id,
            "provider_id": self.provider.id,
            "model": self.info.model[:200],
            "upstream_model": (self.tap.upstream_model or self.upstream_model)[:200],
            "endpoint": self.incoming.path[:200],
            "client": client_name(self.incoming),
            "session_id": self.info.session_id,
            "status": status,
            "kind": self.info.kind,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "tool_calls": {**usage.tool_calls, **usage.containers},
            "cost_usd": str(cost),
            "latency_ms": int((ended - self.started) * 1000),
            "ttft_ms": int((self.first_byte - self.started) * 1000) if self.first_byte else None,
            "partial": partial,
            "error": error[:1000],
            "created_at": self.created_at.isoformat(),
        }


async def forward(exchange: Exchange) -> Reply:
    protocol = exchange.protocol
    try:
        url, headers, body = exchange.upstream_request()
        response = await upstream.get().send(exchange.incoming.method, url, headers, body)
    except httpx.HTTPError as exc:
        if upstream.is_timeout(exc):
            error = ProxyError(
                ErrorKind.UPSTREAM_TIMEOUT,
                f"Provider {exchange.provider.name!r} did not answer in time.",
            )
        else:
            error = ProxyError(
                ErrorKind.UPSTREAM_UNAVAILABLE,
                f"Provider {exchange.provider.name!r} could not be reached ({type(exc).__name__}).",
            )
        await exchange.settle(error.kind.status, error=f"upstream: {exc!r}"[:500])
        return error_reply(protocol, error)
    except BaseException:
        # Cancelled (client gone) or a bug before the upstream answered: release the slot.
        await asyncio.shield(exchange.settle(499, partial=True, error="cancelled before reply"))
        raise
    if response.status_code in (401, 403):
        await response.aclose()
        await exchange.settle(
            502, error=f"provider rejected the gateway's credential (HTTP {response.status_code})"
        )
        return error_reply(
            protocol,
            ProxyError(
                ErrorKind.UPSTREAM_CREDENTIAL,
                f"The gateway's credential for provider {exchange.provider.name!r} was rejected "
                f"(HTTP {response.status_code}). Your own key is fine; an admin must fix the "
                "provider's API key.",
            ),
        )
    headers = exchange.reply_headers(response)
    if not buffered(response):
        return Reply(
            response.status_code,
            headers,
            stream=exchange.relay(response),
            close=lambda: exchange.conclude(response),
        )
    # A JSON answer of known size goes out in one message with its length, as the provider
    # sent it: one write to the client instead of a chunk per read plus a terminator.
    body = b"".join([chunk async for chunk in exchange.relay(response)])  # settles at the end
    if not exchange.complete:
        return error_reply(
            protocol,
            ProxyError(
                ErrorKind.UPSTREAM_UNAVAILABLE,
                f"The connection to provider {exchange.provider.name!r} broke mid-answer.",
            ),
        )
    return Reply(response.status_code, headers, body)


BUFFER_LIMIT = 8 * 1024 * 1024


def buffered(response: httpx.Response) -> bool:
    """Is this a non-streamed answer small enough to read whole before replying?"""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return False
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) <= BUFFER_LIMIT


# --- entry points ------------------------------------------------------------------------


async def handle(incoming: Incoming, protocol: Protocol, endpoint: Endpoint) -> Reply:
    try:
        exchange = await prepare(incoming, protocol, endpoint)
        if exchange.info.kind == "compaction":
            return await sharing.share(exchange.sharing_key(), lambda: admit_and_forward(exchange))
        await exchange.admit()
    except ProxyError as error:
        return error_reply(protocol, error)
    return await forward(exchange)


async def admit_and_forward(exchange: Exchange) -> Reply:
    try:
        await exchange.admit()
    except ProxyError as error:
        return error_reply(exchange.protocol, error)
    return await forward(exchange)


async def prepare(incoming: Incoming, protocol: Protocol, endpoint: Endpoint) -> Exchange:
    """Authenticate, read and authorize the request, and pick its provider."""
    policy = await authenticate(incoming)
    info = protocol.inspect(endpoint, protocol.read(incoming.body), incoming.headers)
    authorize(policy, protocol, endpoint, info)
    catalog = await policies.catalog()
    provider, upstream_model, price = route(catalog, protocol, policy, info.model)
    return Exchange(incoming, protocol, endpoint, policy, info, provider, upstream_model, price)


async def list_models(incoming: Incoming, protocol: Protocol) -> Reply:
    """The key's allowed models, in the protocol's list shape."""
    try:
        policy = await authenticate(incoming)
    except ProxyError as error:
        return error_reply(protocol, error)
    catalog = await policies.catalog()
    names = await _upstream_model_ids(catalog, protocol)
    if not names:
        # The provider's list is unavailable: offer the concrete names admins configured.
        names = [r.pattern for r in catalog.routes if not any(c in r.pattern for c in "*?[")]
    allowed = sorted({name for name in names if policy.model_allowed(name)})
    return Reply(200, [(b"content-type", b"application/json")], protocol.models_body(allowed))


async def _upstream_model_ids(catalog: Catalog, protocol: Protocol) -> list[str]:
    provider = catalog.provider_for(protocol.provider_kind)
    if provider is None:
        return []
    headers = [*protocol.default_headers(), *protocol.credential_headers(provider)]
    try:
        response = await upstream.get().client.get(
            provider.base_url + "/v1/models", headers=headers, params={"limit": 1000}
        )
        data = response.json().get("data", []) if response.status_code == 200 else []
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
