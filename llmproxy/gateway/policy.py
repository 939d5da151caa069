"""Immutable policy snapshots and the per-process cache that serves them.

The hot path asks this module who a key is, what it may do, where a model goes and what it
costs. Answers come from memory; the database is read once per key after any change. A
change anywhere (key, team, provider, route, price) bumps a shared generation number; each
worker checks it at most every ``LLMPROXY_POLICY_REFRESH_SECONDS`` and drops its snapshots
when it moved, so a revoked key stops working everywhere within a second.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from django.conf import settings

from accounts import keys
from accounts.models import ApiKey
from billing import budgets
from billing.budgets import Budget
from billing.models import Price
from billing.pricing import PriceBook, model_price
from llmproxy.gateway import dbthreads, hotstore
from llmproxy.gateway.models import ModelRoute, Provider


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(frozen=True)
class KeyPolicy:
    key_id: int
    name: str
    prefix: str
    owner_id: int | None
    team_id: int | None
    revoked: bool
    expires_at: float | None  # unix time
    allowed_models: tuple[str, ...]
    allowed_endpoints: tuple[str, ...]
    allowed_tools: tuple[str, ...]
    allow_background: bool
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    budgets: tuple[Budget, ...]
    reserve_expected: bool = False

    @property
    def limited(self) -> bool:
        """Does admission have anything to check or count for this key?"""
        return bool(self.budgets) or any(
            limit is not None for limit in (self.rpm, self.tpm, self.max_concurrent)
        )

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def model_allowed(self, model: str) -> bool:
        return not self.allowed_models or _matches(model, self.allowed_models)

    def endpoint_allowed(self, endpoint: str) -> bool:
        return not self.allowed_endpoints or _matches(endpoint, self.allowed_endpoints)

    def hosted_tool_allowed(self, tool: str) -> bool:
        return _matches(tool, self.allowed_tools)


@dataclass(frozen=True)
class ProviderInfo:
    id: int
    name: str
    kind: str
    base_url: str
    credential: str = field(repr=False)
    extra_headers: tuple[tuple[str, str], ...] = ()
    websockets: bool = False  # serves GET /v1/responses as a websocket


@dataclass(frozen=True)
class Route:
    pattern: str
    provider: ProviderInfo
    upstream_model: str


class Catalog:
    """Enabled providers and routes, and the price book."""

    def __init__(self, routes: list[Route], providers: list[ProviderInfo], prices: PriceBook):
        self.routes = routes
        self.providers = providers
        self.prices = prices

    def route(self, model: str, kind: str) -> tuple[ProviderInfo, str] | None:
        """The provider of ``kind`` that serves ``model``, and the model's name there.

        A route that names the model decides. Without one, the model goes to the first
        enabled provider of the protocol, unless it is known as another kind's model (a
        route or a price of another kind names it): ``gpt-5.5`` sent to the Messages API is
        refused, not sent to Anthropic.
        """
        for route in self.routes:
            if route.provider.kind == kind and fnmatchcase(model, route.pattern):
                return route.provider, route.upstream_model or model
        if self.other_kind(model, kind) is not None:
            return None
        for provider in self.providers:
            if provider.kind == kind:
                return provider, model
        return None

    def other_kind(self, model: str, kind: str) -> str | None:
        """The kind ``model`` belongs to when that is not ``kind``, else None."""
        for route in self.routes:
            if route.provider.kind != kind and fnmatchcase(model, route.pattern):
                return route.provider.kind
        kinds = self.prices.kinds_of(model)
        if kinds and kind not in kinds and "" not in kinds:
            return sorted(kinds)[0]
        return None

    def provider_for(self, kind: str) -> ProviderInfo | None:
        return next((p for p in self.providers if p.kind == kind), None)


def load_key_policy(digest: str) -> KeyPolicy | None:

    key = ApiKey.objects.select_related("team").filter(digest=digest).first()
    if key is None:
        return None
    return KeyPolicy(
        key_id=key.pk,
        name=key.name,
        prefix=key.prefix,
        owner_id=key.owner_id,
        team_id=key.team_id,
        revoked=key.revoked_at is not None,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        allowed_models=tuple(key.allowed_models or ()),
        allowed_endpoints=tuple(key.allowed_endpoints or ()),
        allowed_tools=tuple(key.allowed_tools or ()),
        allow_background=key.allow_background,
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrent=key.max_concurrent,
        budgets=budgets.for_key(key),
        reserve_expected=key.reserve_mode == "expected",
    )


def load_catalog() -> Catalog:

    providers = {
        row.pk: ProviderInfo(
            id=row.pk,
            name=row.name,
            kind=row.kind,
            base_url=row.base_url.rstrip("/"),
            credential=row.credential,
            extra_headers=tuple((str(k), str(v)) for k, v in (row.extra_headers or {}).items()),
            websockets=row.websockets,
        )
        for row in Provider.objects.filter(enabled=True).order_by("pk")
    }
    routes = [
        Route(row.pattern, providers[row.provider_id], row.upstream_model)
        for row in ModelRoute.objects.filter(enabled=True, provider__enabled=True).order_by(
            "priority", "pk"
        )
    ]
    prices = PriceBook([model_price(row) for row in Price.objects.all()])
    return Catalog(routes, list(providers.values()), prices)


# Unknown digests are remembered apart from known keys, oldest forgotten first: a flood of
# made-up keys costs each one lookup and can never push a valid key out of the cache.
_MAX_UNKNOWN = 10_000
_MAX_KEYS = 200_000  # known keys: bounded by what admins created


class PolicyCache:
    def __init__(self) -> None:
        self._keys: dict[str, KeyPolicy] = {}
        self._unknown: OrderedDict[str, None] = OrderedDict()
        self._catalog: Catalog | None = None
        self._generation: tuple | None = None
        self._checked_at = float("-inf")

    async def key(self, secret: str) -> KeyPolicy | None:
        if not keys.looks_like_key(secret):
            return None
        await self._refresh()
        digest = keys.key_digest(secret)
        policy = self._keys.get(digest)
        if policy is not None or digest in self._unknown:
            return policy
        policy = await dbthreads.run(load_key_policy, digest)
        if policy is None:
            self._unknown[digest] = None
            while len(self._unknown) > _MAX_UNKNOWN:
                self._unknown.popitem(last=False)
        elif len(self._keys) < _MAX_KEYS:
            self._keys[digest] = policy
        return policy

    async def catalog(self) -> Catalog:
        await self._refresh()
        if self._catalog is None:
            self._catalog = await dbthreads.run(load_catalog)
        return self._catalog

    async def _refresh(self) -> None:
        now = time.monotonic()
        local = hotstore.local_generation()
        if self._generation is not None and self._generation[0] != local:
            self._checked_at = float("-inf")  # this process changed something: look now
        if now - self._checked_at < settings.LLMPROXY_POLICY_REFRESH_SECONDS:
            return
        self._checked_at = now
        generation = (local, await hotstore.shared_generation())
        if generation != self._generation:
            self._keys.clear()
            self._unknown.clear()
            self._catalog = None
            self._generation = generation


policies = PolicyCache()
