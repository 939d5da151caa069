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

import httpx

from llmproxy.core import metrics
from llmproxy.gateway import compaction, sharing, upstream
from llmproxy.gateway.context import held_context
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.exchange import Exchange, client_name, forwarded_headers, upstream_headers
from llmproxy.gateway.forwarding import forward
from llmproxy.gateway.kinds import kind_of
from llmproxy.gateway.limits import limiter
from llmproxy.gateway.messages import Incoming, Reply, error_reply
from llmproxy.gateway.policy import Candidate, Catalog, KeyPolicy, policies
from llmproxy.gateway.protocols.base import Endpoint, Protocol, RequestInfo

log = logging.getLogger(__name__)

__all__ = [
    "Exchange",
    "Incoming",
    "Reply",
    "authenticate",
    "client_name",
    "error_reply",
    "forward",
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
    what = "API key" if policy.key_id is not None else "sign-in"
    if policy.revoked:
        raise ProxyError(ErrorKind.AUTHENTICATION, f"This {what} has been revoked.")
    if policy.expired(time.time()):
        raise ProxyError(ErrorKind.AUTHENTICATION, f"This {what} has expired.")
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


def route(catalog: Catalog, protocol: Protocol, policy: KeyPolicy, info) -> list[Candidate]:
    """The providers that may serve the call, in route order."""
    model, kind = info.model, protocol.provider_kind
    found = catalog.candidates(model, kind, policy)
    if not found:
        other = catalog.other_kind(model, kind)
        if other is not None:
            raise ProxyError(
                ErrorKind.NOT_FOUND,
                f"Model {model!r} is an {other} model; this endpoint speaks the {protocol.name} "
                f"protocol. Send it to the {other} endpoint instead.",
            )
        raise ProxyError(ErrorKind.NOT_FOUND, f"No {kind} provider serves model {model!r}.")
    if policy.budgets:
        # A budget cannot be kept for a model whose cost is unknown: refuse, don't guess.
        priced = [
            c for c in found
            if catalog.prices.find(c.upstream_model, kind, c.provider.id)
            or catalog.prices.find(model, kind, c.provider.id)
        ]  # fmt: skip
        if not priced:
            raise ProxyError(
                ErrorKind.PERMISSION,
                f"Model {model!r} has no price, so budgeted keys may not use it yet; "
                "an admin must add its price.",
            )
        found = priced
    return found


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
    info.held_prompt_tokens = held_context.tokens(policy.subject, info)
    authorize(policy, protocol, endpoint, info)
    catalog = await policies.catalog()
    candidates = route(catalog, protocol, policy, info)
    exchange = Exchange(incoming, protocol, endpoint, policy, info, candidates, catalog.prices)
    exchange.forwarded = forwarded
    return exchange


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
        return refusal(protocol, error)
    return await forward(exchange)


async def admit_and_forward(exchange: Exchange) -> Reply:
    try:
        await exchange.admit()
    except ProxyError as error:
        return refusal(exchange.protocol, error)
    return await compaction.forward(exchange)  # a compaction: one too large goes in chunks


def refusal(protocol: Protocol, error: ProxyError) -> Reply:
    """The gateway refuses the call itself (counted by reason on /metrics)."""
    metrics.refused(error.kind.name, protocol.name)
    return error_reply(protocol, error)


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
        return refusal(protocol, error)
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
    request = kind_of(provider.kind).models_request(provider)
    if request is None:
        return []
    try:
        response = await upstream.get().client.request(
            request.method, request.url, headers=request.headers
        )
        data = response.json().get("data", []) if response.status_code == 200 else []
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
