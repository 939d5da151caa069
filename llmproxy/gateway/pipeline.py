"""The proxy pipeline: authenticate → authorize → admit → forward → relay → settle.

Plain async code with no Channels types: it takes an ``Incoming`` request and returns a
``Reply`` whose body is bytes or an async iterator of the upstream's chunks, unchanged. The
reply's ``finish`` settles the call (``Exchange.settle``); the only other callers of settle
are the paths where no reply will ever carry the call (the provider could not be reached,
the client left before it answered).
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal

import aiohttp
import httpx

from llmproxy.gateway import sharing, upstream
from llmproxy.gateway.context import held_context
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.exchange import (
    CLIENT_CLOSED,
    Exchange,
    client_name,
    forwarded_headers,
    upstream_headers,
)
from llmproxy.gateway.limits import limiter
from llmproxy.gateway.messages import Incoming, Reply, error_reply
from llmproxy.gateway.policy import Catalog, KeyPolicy, policies
from llmproxy.gateway.protocols.base import Endpoint, Protocol, RequestInfo

log = logging.getLogger(__name__)

__all__ = [
    "Exchange",
    "Incoming",
    "Reply",
    "authenticate",
    "client_name",
    "error_reply",
    "forwarded_headers",
    "handle",
    "list_models",
    "prepare",
    "upstream_headers",
]


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
    kind = protocol.provider_kind
    found = catalog.route(model, kind)
    if found is None:
        other = catalog.other_kind(model, kind)
        if other is not None:
            raise ProxyError(
                ErrorKind.NOT_FOUND,
                f"Model {model!r} is an {other} model; this endpoint speaks the {protocol.name} "
                f"protocol. Send it to the {other} endpoint instead.",
            )
        raise ProxyError(ErrorKind.NOT_FOUND, f"No {kind} provider serves model {model!r}.")
    provider, upstream_model = found
    price = catalog.prices.find(upstream_model, kind) or catalog.prices.find(model, kind)
    if price is None and policy.budgets:
        # A budget cannot be kept for a model whose cost is unknown: refuse, don't guess.
        raise ProxyError(
            ErrorKind.PERMISSION,
            f"Model {model!r} has no price, so budgeted keys may not use it yet; "
            "an admin must add its price.",
        )
    return provider, upstream_model, price


async def prepare(
    incoming: Incoming, protocol: Protocol, endpoint: Endpoint, policy: KeyPolicy | None = None
) -> Exchange:
    """Authenticate (unless the caller did, from the headers), read and authorize the
    request, and pick its provider."""
    if policy is None:
        policy = await authenticate(incoming)
    forwarded = forwarded_headers(protocol, incoming.headers)
    info = protocol.inspect(endpoint, protocol.read(incoming.body), incoming.headers)
    info.held_references += protocol.held_references(incoming.body)
    info.held_prompt_tokens = held_context.tokens(policy.key_id, info)
    authorize(policy, protocol, endpoint, info)
    catalog = await policies.catalog()
    provider, upstream_model, price = route(catalog, protocol, policy, info.model)
    exchange = Exchange(incoming, protocol, endpoint, policy, info, provider, upstream_model, price)
    exchange.forwarded = forwarded
    return exchange


# --- forward --------------------------------------------------------------------------------

BUFFER_LIMIT = 8 * 1024 * 1024


def buffered(response: httpx.Response) -> bool:
    """Is this a non-streamed answer small enough to read whole before replying?"""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return False
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) <= BUFFER_LIMIT


def unreachable(exchange: Exchange, exc: Exception) -> ProxyError:
    name = exchange.provider.name
    if isinstance(exc, httpx.HTTPError) and upstream.is_timeout(exc):
        return ProxyError(ErrorKind.UPSTREAM_TIMEOUT, f"Provider {name!r} did not answer in time.")
    return ProxyError(
        ErrorKind.UPSTREAM_UNAVAILABLE,
        f"Provider {name!r} could not be reached ({type(exc).__name__}).",
    )


async def forward(exchange: Exchange) -> Reply:
    protocol = exchange.protocol
    try:
        url, headers, body = exchange.upstream_request()
    except ProxyError as error:
        exchange.reached = False
        await exchange.settle(error.kind.status, error=error.message, partial=False)
        return error_reply(protocol, error)
    try:
        response = await upstream.get().send(exchange.incoming.method, url, headers, body)
    except (httpx.HTTPError, aiohttp.ClientError) as exc:
        error = unreachable(exchange, exc)
        # A provider that took the request and then timed out may have billed for it.
        exchange.reached = error.kind is ErrorKind.UPSTREAM_TIMEOUT
        await exchange.settle(error.kind.status, error=upstream.describe(exc), partial=False)
        return error_reply(protocol, error)
    except BaseException:
        # Cancelled (client gone) or a bug before the upstream answered: release the slot.
        await exchange.settle(CLIENT_CLOSED, error="cancelled before reply", partial=True)
        raise
    if response.status_code == 401:
        await response.aclose()
        await exchange.settle(
            502, error="provider rejected the gateway's credential (HTTP 401)", partial=False
        )
        return error_reply(
            protocol,
            ProxyError(
                ErrorKind.UPSTREAM_CREDENTIAL,
                f"The gateway's credential for provider {exchange.provider.name!r} was rejected "
                "(HTTP 401). Your own key is fine; an admin must fix the provider's API key.",
            ),
        )
    if response.status_code == 403:
        return await refused_upstream(exchange, response)
    exchange.status = response.status_code

    async def release(complete: bool) -> None:
        await response.aclose()

    exchange.release = release
    headers = exchange.reply_headers(response.headers.raw)
    streaming = response.headers.get("content-type", "").startswith("text/event-stream")
    exchange.tap = protocol.tap(streaming, exchange.info, exchange.endpoint)
    broken = protocol.stream_error_event if streaming else None
    relayed = exchange.relay(response.aiter_raw(), broken)
    if not buffered(response):
        return Reply(response.status_code, headers, stream=relayed, close=exchange.close)
    # A JSON answer of known size goes out in one message with its length, as the provider
    # sent it: one write to the client instead of a chunk per read plus a terminator.
    try:
        body = b"".join([chunk async for chunk in relayed])
    except BaseException:
        await exchange.close()  # the client left while the answer was read: settle it
        raise
    if not exchange.complete:
        reply = error_reply(
            protocol,
            ProxyError(
                ErrorKind.UPSTREAM_UNAVAILABLE,
                f"The connection to provider {exchange.provider.name!r} broke mid-answer.",
            ),
        )
        reply.close = exchange.close
        return reply
    return Reply(response.status_code, headers, body, close=exchange.close)


async def refused_upstream(exchange: Exchange, response: httpx.Response) -> Reply:
    """The provider refused the gateway's request (403): a permission, region or policy
    refusal of the organisation's account, not of the client's key. Say what the provider
    said, as a 502: a 403 would tell the client its own key is refused."""
    try:
        said = upstream.error_message(await response.aread())
    except upstream.BROKEN:
        said = ""
    finally:
        await response.aclose()
    name = exchange.provider.name
    await exchange.settle(502, error=f"provider refused the request (HTTP 403): {said}"[:500])
    return error_reply(
        exchange.protocol,
        ProxyError(
            ErrorKind.UPSTREAM_CREDENTIAL,
            f"Provider {name!r} refused the gateway's request (HTTP 403)"
            + (f": {said}" if said else ".")
            + " Your own key is fine; an admin must check the provider account's access.",
        ),
    )


# --- entry points ------------------------------------------------------------------------


async def handle(
    incoming: Incoming, protocol: Protocol, endpoint: Endpoint, policy: KeyPolicy | None = None
) -> Reply:
    try:
        exchange = await prepare(incoming, protocol, endpoint, policy)
        if exchange.info.kind == "compaction":
            return await sharing.share(exchange, admit_and_forward)
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


async def list_models(
    incoming: Incoming, protocol: Protocol, policy: KeyPolicy | None = None
) -> Reply:
    """The key's allowed models, in the protocol's list shape."""
    try:
        if policy is None:
            policy = await authenticate(incoming)
        # The list is an upstream call with the organisation's credential: it counts
        # against the key's request rate like any other.
        ticket = await limiter().admit(policy, billed=False)
    except ProxyError as error:
        return error_reply(protocol, error)
    catalog = await policies.catalog()
    try:
        names = await _upstream_model_ids(catalog, protocol)
    finally:
        await limiter().settle(ticket, Decimal(0), 0)
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
