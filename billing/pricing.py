"""Prices: find the one for a model name, and what a call cost.

A ``PriceBook`` is an immutable snapshot of the Price table that lives in the gateway's
policy cache, so pricing a call costs no query.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase

from billing.usage import Usage

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


@dataclass(frozen=True)
class Rates:
    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal


@dataclass(frozen=True)
class ModelPrice:
    pattern: str
    provider_kind: str  # "anthropic", "openai"; empty: a price for that model on any kind
    base: Rates
    long_context_threshold: int | None
    long: Rates | None
    tool_prices: dict[str, Decimal]
    container_prices: dict[str, Decimal]
    default_max_output_tokens: int | None
    provider_id: int | None = None  # a provider's own price (a cloud's can differ)

    def rates_for(self, usage: Usage) -> Rates:
        threshold = self.long_context_threshold
        if self.long is not None and threshold is not None and usage.prompt_tokens > threshold:
            return self.long
        return self.base

    def cost(self, usage: Usage) -> Decimal:
        rates = self.rates_for(usage)
        tokens = (
            usage.input_tokens * rates.input
            + usage.output_tokens * rates.output
            + usage.cache_read_tokens * rates.cache_read
            + usage.cache_write_5m_tokens * rates.cache_write_5m
            + usage.cache_write_1h_tokens * rates.cache_write_1h
        ) / MILLION
        return (
            tokens
            + per_call(usage.tool_calls, self.tool_prices)
            + per_call(usage.containers, self.container_prices)
        )


def per_call(calls: dict[str, int], prices: dict[str, Decimal]) -> Decimal:
    """What ``calls`` (count by tool or container size) cost at per-call ``prices``."""
    total = ZERO
    for name, count in calls.items():
        total += count * _price_for_tool(name, prices)
    return total


def _price_for_tool(name: str, prices: dict[str, Decimal]) -> Decimal:
    # "web_search_20250305" is priced by the "web_search" entry: longest matching prefix wins.
    best = ""
    for prefix in prices:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return prices[best] if best else ZERO


def specificity(pattern: str) -> tuple[int, int]:
    """Exact names first, then the pattern with the most literal characters."""
    literal = sum(1 for char in pattern if char not in "*?[]")
    return (0 if literal == len(pattern) else 1, -literal)


class PriceBook:
    """Prices by model name and provider kind: a model is priced by its own kind's row."""

    def __init__(self, prices: list[ModelPrice]) -> None:
        self._prices = sorted(prices, key=lambda p: specificity(p.pattern))
        self._found: dict[tuple[str, str], ModelPrice | None] = {}
        self._kinds: dict[str, frozenset[str]] = {}

    def find(self, model: str, kind: str, provider_id: int | None = None) -> ModelPrice | None:
        """The most specific price for ``model`` on a provider of ``kind``: the provider's
        own row if it has one, else a row of the kind (a row without a kind applies to every
        kind)."""
        try:
            return self._found[model, kind, provider_id]
        except KeyError:
            pass
        own = (
            p
            for p in self._prices
            if p.provider_id == provider_id and fnmatchcase(model, p.pattern)
        )
        general = (
            p
            for p in self._prices
            if p.provider_id is None
            and p.provider_kind in (kind, "")
            and fnmatchcase(model, p.pattern)
        )
        match = next(own, None) if provider_id is not None else None
        match = match or next(general, None)
        if len(self._found) < 10_000:  # model names come from clients: bound the memo
            self._found[model, kind, provider_id] = match
        return match

    def kinds_of(self, model: str) -> frozenset[str]:
        """The provider kinds that price ``model`` by name ("" for rows of any kind)."""
        found = self._kinds.get(model)
        if found is None:
            matching = (p for p in self._prices if fnmatchcase(model, p.pattern))
            found = frozenset(p.provider_kind for p in matching)
            if len(self._kinds) < 10_000:  # model names come from clients: bound the memo
                self._kinds[model] = found
        return found

    def __len__(self) -> int:
        return len(self._prices)


def _rates(row, prefix: str = "") -> Rates:
    return Rates(
        input=getattr(row, f"{prefix}input_per_mtok"),
        output=getattr(row, f"{prefix}output_per_mtok"),
        cache_write_5m=getattr(row, f"{prefix}cache_write_5m_per_mtok") or ZERO,
        cache_write_1h=getattr(row, f"{prefix}cache_write_1h_per_mtok") or ZERO,
        cache_read=getattr(row, f"{prefix}cache_read_per_mtok") or ZERO,
    )


def model_price(row) -> ModelPrice:
    """Snapshot one ``billing.models.Price`` row."""
    has_long = row.long_input_per_mtok is not None and row.long_output_per_mtok is not None
    return ModelPrice(
        pattern=row.model_pattern,
        provider_kind=row.provider_kind,
        provider_id=row.provider_id,
        base=_rates(row),
        long_context_threshold=row.long_context_threshold,
        long=_rates(row, "long_") if has_long else None,
        tool_prices={name: Decimal(str(v)) for name, v in (row.tool_prices or {}).items()},
        container_prices={
            name: Decimal(str(v)) for name, v in (row.container_prices or {}).items()
        },
        default_max_output_tokens=row.default_max_output_tokens,
    )
