"""Immutable policy snapshots and the per-process cache that serves them.

The hot path asks this module who a key is, what it may do, where a model goes and what it
costs. Answers come from memory; the database is read once per key after any change. A
change anywhere (key, team, provider, route, price) bumps a shared generation number; a
thread in each worker reads it every ``LLMPROXY_POLICY_REFRESH_SECONDS`` and the worker drops
its snapshots when it moved, so a revoked key stops working everywhere within a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from django.conf import settings

from accounts import keys
from accounts.models import ApiKey, Person, SignInToken, Team
from accounts.services import billed_team
from billing import budgets
from billing.budgets import Budget
from billing.models import Price
from billing.pricing import PriceBook, model_price
from llmproxy.gateway import dbthreads, hotstore
from llmproxy.gateway.models import ModelRoute, Provider

log = logging.getLogger(__name__)


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Limits:
    """The rate limits of one layer (a key, a sign-in, a person, a team)."""

    subject: str  # "key:12", "person:3", "team:5": names its counters
    holder: str  # "This key", "Your account", "Your team": says whose limit refused
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    @property
    def limited(self) -> bool:
        return any(limit is not None for limit in (self.rpm, self.tpm, self.max_concurrent))


@dataclass(frozen=True)
class KeyPolicy:
    """What the credential a call came with may do: an API key or a sign-in token, with the
    rules of the person it belongs to and of the team the call is billed to folded in. Every
    layer must allow a call (docs/people.md)."""

    key_id: int | None  # None for a sign-in token
    name: str
    prefix: str
    person_id: int | None
    team_id: int | None  # the team the call is billed to
    revoked: bool
    expires_at: float | None  # unix time
    # Each non-empty tuple is one layer's patterns; a value must match every layer's.
    model_rules: tuple[tuple[str, ...], ...]
    endpoint_rules: tuple[tuple[str, ...], ...]
    # Hosted tools: granted by the credential's own list (a key's), or for a sign-in by the
    # person's or team's; each other layer that lists tools restricts them further.
    tool_grants: tuple[str, ...]
    tool_rules: tuple[tuple[str, ...], ...]
    allow_background: bool
    limits: tuple[Limits, ...]
    budgets: tuple[Budget, ...]
    reserve_expected: bool = False
    credential: str = "key"  # "key", or the sign-in client ("claude_code", "cli")
    team_name: str = ""  # the billed team's name (a metrics label)
    subject: str = ""  # the credential, for sharing and context: "key:12", "login:<family>"

    @property
    def limited(self) -> bool:
        """Does admission have anything to check or count for this credential?"""
        return bool(self.budgets) or any(limits.limited for limits in self.limits)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def model_allowed(self, model: str) -> bool:
        return all(_matches(model, rule) for rule in self.model_rules)

    def endpoint_allowed(self, endpoint: str) -> bool:
        return all(_matches(endpoint, rule) for rule in self.endpoint_rules)

    def hosted_tool_allowed(self, tool: str) -> bool:
        return _matches(tool, self.tool_grants) and all(
            _matches(tool, rule) for rule in self.tool_rules
        )


def _rules(*lists) -> tuple[tuple[str, ...], ...]:
    """The layers' pattern lists that restrict (empty or unset ones do not)."""
    return tuple(tuple(patterns) for patterns in lists if patterns)


def _layers(person: Person | None, team: Team | None) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    if person is not None:
        found.append(("person", person))
    if team is not None:
        found.append(("team", team))
    return found


HOLDERS = {"person": "Your account", "team": "Your team"}


def _key_limits(key: ApiKey, layers) -> tuple[Limits, ...]:
    own = Limits(f"key:{key.pk}", "This key", key.rpm, key.tpm, key.max_concurrent)
    return tuple([own, *_layer_limits(layers)] if own.limited else _layer_limits(layers))


def _layer_limits(layers) -> list[Limits]:
    limits = [
        Limits(f"{scope}:{owner.pk}", HOLDERS[scope], owner.rpm, owner.tpm, owner.max_concurrent)
        for scope, owner in layers
    ]
    return [limit for limit in limits if limit.limited]


@dataclass(frozen=True)
class ProviderInfo:
    id: int
    name: str
    kind: str  # how it is reached: anthropic, openai, bedrock, vertex, azure (gateway/kinds)
    base_url: str
    credential: str = field(repr=False)
    extra_headers: tuple[tuple[str, str], ...] = ()
    websockets: bool = False  # serves GET /v1/responses as a websocket
    protocol: str = ""  # what its clients speak: anthropic or openai
    options: tuple[tuple[str, object], ...] = ()  # the kind's settings (region, project, ...)

    def option(self, name: str, default=None):
        return dict(self.options).get(name, default)


@dataclass(frozen=True)
class Route:
    pattern: str
    provider: ProviderInfo
    upstream_model: str
    priority: int = 100
    weight: int = 1
    teams: frozenset[int] = frozenset()  # only calls billed to these teams (empty: all)
    people: frozenset[int] = frozenset()  # only these people's calls (empty: all)

    def applies(self, model: str, policy: KeyPolicy | None) -> bool:
        if not fnmatchcase(model, self.pattern):
            return False
        if self.teams and (policy is None or policy.team_id not in self.teams):
            return False
        return not self.people or (policy is not None and policy.person_id in self.people)


@dataclass(frozen=True)
class Candidate:
    """One way to serve a call: a provider, the model's name there, the route's order."""

    provider: ProviderInfo
    upstream_model: str
    priority: int = 100
    weight: int = 1


class Catalog:
    """Enabled providers and routes, and the price book."""

    def __init__(self, routes: list[Route], providers: list[ProviderInfo], prices: PriceBook):
        self.routes = routes
        self.providers = providers
        self.prices = prices

    def candidates(
        self, model: str, protocol: str, policy: KeyPolicy | None = None
    ) -> list[Candidate]:
        """The providers that may serve ``model`` for ``policy``'s caller, best first by
        route priority (the order of equal ones is chosen per call: gateway/failover.py).

        Routes that name the model decide. Without one, the model goes to the first enabled
        provider of the protocol, unless it is known as another protocol's model (a route
        or a price of another protocol names it): ``gpt-5.5`` sent to the Messages API is
        refused, not sent to Anthropic.
        """
        found = [
            Candidate(r.provider, r.upstream_model or model, r.priority, r.weight)
            for r in self.routes
            if r.provider.protocol == protocol and r.applies(model, policy)
        ]
        if found or self.other_kind(model, protocol) is not None:
            return found
        first = self.provider_for(protocol)
        return [Candidate(first, model)] if first is not None else []

    def route(self, model: str, protocol: str) -> tuple[ProviderInfo, str] | None:
        """The first candidate (callers that need one provider, not a failover list)."""
        found = self.candidates(model, protocol)
        return (found[0].provider, found[0].upstream_model) if found else None

    def other_kind(self, model: str, protocol: str) -> str | None:
        """The protocol ``model`` belongs to when that is not ``protocol``, else None."""
        for route in self.routes:
            if route.provider.protocol != protocol and fnmatchcase(model, route.pattern):
                return route.provider.protocol
        kinds = self.prices.kinds_of(model)
        if kinds and protocol not in kinds and "" not in kinds:
            return sorted(kinds)[0]
        return None

    def provider_for(self, protocol: str) -> ProviderInfo | None:
        return next((p for p in self.providers if p.protocol == protocol), None)


def load_key_policy(digest: str) -> KeyPolicy | None:
    key = ApiKey.objects.select_related("team", "owner").filter(digest=digest).first()
    if key is None:
        return None
    person = Person.objects.select_related("default_team").filter(pk=key.owner_id).first()
    team = billed_team(key=key, person=person)
    layers = _layers(person, team)
    revoked = key.revoked_at is not None or (key.owner is not None and not key.owner.is_active)
    return KeyPolicy(
        key_id=key.pk,
        name=key.name,
        prefix=key.prefix,
        person_id=key.owner_id,
        team_id=team.pk if team is not None else None,
        revoked=revoked,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        model_rules=_rules(key.allowed_models, *(o.allowed_models for _, o in layers)),
        endpoint_rules=_rules(key.allowed_endpoints, *(o.allowed_endpoints for _, o in layers)),
        tool_grants=tuple(key.allowed_tools or ()),
        tool_rules=_rules(*(o.allowed_tools for _, o in layers)),
        allow_background=key.allow_background,
        limits=_key_limits(key, layers),
        budgets=budgets.for_call(key=key, person=person, team=team),
        reserve_expected=key.reserve_mode == "expected",
        subject=f"key:{key.pk}",
        team_name=team.name if team is not None else "",
    )


def load_token_policy(digest: str) -> KeyPolicy | None:
    token = (
        SignInToken.objects.select_related("person")
        .filter(digest=digest, kind=SignInToken.ACCESS)
        .first()
    )
    if token is None:
        return None
    user = token.person
    person = Person.objects.select_related("default_team").filter(pk=user.pk).first()
    team = billed_team(key=None, person=person)
    layers = _layers(person, team)
    grants = next((o.allowed_tools for _, o in layers if o.allowed_tools is not None), None)
    return KeyPolicy(
        key_id=None,
        name=f"{user.get_username()} ({token.get_client_display()})",
        prefix=token.prefix,
        person_id=user.pk,
        team_id=team.pk if team is not None else None,
        revoked=token.revoked_at is not None or not user.is_active,
        expires_at=token.expires_at.timestamp(),
        model_rules=_rules(*(o.allowed_models for _, o in layers)),
        endpoint_rules=_rules(*(o.allowed_endpoints for _, o in layers)),
        tool_grants=tuple(grants or ()),
        tool_rules=_rules(*(o.allowed_tools for _, o in layers)),
        allow_background=False,
        limits=tuple(_layer_limits(layers)),
        budgets=budgets.for_call(key=None, person=person, team=team),
        credential=token.client,
        subject=f"login:{token.family}",
        team_name=team.name if team is not None else "",
    )


def _route(row: ModelRoute, provider: ProviderInfo) -> Route:
    teams = frozenset(team.pk for team in row.teams.all())
    people = frozenset(person.pk for person in row.people.all())
    return Route(row.pattern, provider, row.upstream_model, row.priority, row.weight, teams, people)


def _frozen(value):
    """An option's JSON value, immutable like the snapshot that holds it."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


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
            protocol=row.protocol,
            options=tuple(sorted((k, _frozen(v)) for k, v in (row.options or {}).items())),
        )
        for row in Provider.objects.filter(enabled=True).order_by("pk")
    }
    rows = (
        ModelRoute.objects.filter(enabled=True, provider__enabled=True)
        .prefetch_related("teams", "people")
        .order_by("priority", "pk")
    )
    routes = [_route(row, providers[row.provider_id]) for row in rows]
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
        self._shared: int | None = None  # the shared generation, as the watcher last read it
        self._watcher: threading.Thread | None = None
        self._watch_lock = threading.Lock()

    async def key(self, secret: str) -> KeyPolicy | None:
        """The policy of a virtual key or of a sign-in access token, or None."""
        if keys.looks_like_key(secret):
            loader = load_key_policy
        elif keys.looks_like(secret, keys.ACCESS_MARKER):
            loader = load_token_policy
        else:
            return None
        await self._refresh()
        digest = keys.key_digest(secret)
        policy = self._keys.get(digest)
        if policy is not None or digest in self._unknown:
            return policy
        policy = await dbthreads.run(loader, digest)
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
        """Drop the snapshots when the generation moved: at once for a change this process
        made; within ``LLMPROXY_POLICY_REFRESH_SECONDS`` for one made elsewhere.

        The shared generation (a file, or Redis) is read by a watcher thread once a period,
        never on the request path: a file read can stall the event loop for as long as the
        disk is busy (the usage writer's fsync), and a Redis round trip is a request's worth
        of latency. With a period of 0 every request reads it itself.
        """
        local = hotstore.local_generation()
        if settings.LLMPROXY_POLICY_REFRESH_SECONDS <= 0:
            shared = await hotstore.shared_generation()
        elif self._shared is None or (self._generation and self._generation[0] != local):
            # The first call, or this process changed something (and bumped the shared
            # generation too): read it now, so the watcher's next reading of that same bump
            # is not taken for another change, dropping every snapshot a second time.
            shared = self._shared = await hotstore.shared_generation()
            self._watch()
        else:
            shared = self._shared
        generation = (local, shared)
        if generation != self._generation:
            self._keys.clear()
            self._unknown.clear()
            self._catalog = None
            self._generation = generation

    def _watch(self) -> None:
        with self._watch_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch_generation, name="policy-generation", daemon=True
                )
                self._watcher.start()

    def _watch_generation(self) -> None:
        failing = False
        while True:
            time.sleep(max(settings.LLMPROXY_POLICY_REFRESH_SECONDS, 0.01))
            try:
                self._shared = hotstore.read_shared_generation()
            except Exception:
                # The snapshots are kept meanwhile (the database is the truth; a revocation
                # waits for the store to come back). Logged once per outage.
                if not failing:
                    log.exception("the policy generation could not be read; retrying")
                failing = True
            else:
                failing = False


policies = PolicyCache()
