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
    base: Rates
    long_context_threshold: int | None
    long: Rates | None
    tool_prices: dict[str, Decimal]
    container_prices: dict[str, Decimal]
    default_max_output_tokens: int | None

    def rates_for(self, usage: Usage) -> Rates:
        threshold = self.long_context_threshold
        if self.long is not None and threshold is not None and usage.prompt_tokens > threshold:
            return self.long
        return self.base

    def reservation(self, prompt_tokens: int, max_output_tokens: int, expected: bool) -> Decimal:
        """What to hold against a budget before the call: its worst case, or an expected cost.

        Worst case: every prompt token at the dearest input rate (a 1-hour cache write costs
        twice plain input) and every allowed output token. Expected: plain input rates and
        at most ``expected_output`` output tokens, for keys that accept a bounded overshoot.
        """
        usage = Usage(input_tokens=prompt_tokens)
        rates = self.rates_for(usage)
        if expected:
            from django.conf import settings

            output = min(max_output_tokens, settings.LLMPROXY_EXPECTED_OUTPUT_TOKENS)
            return (prompt_tokens * rates.input + output * rates.output) / MILLION
        dearest_input = max(rates.input, rates.cache_write_5m, rates.cache_write_1h)
        return (prompt_tokens * dearest_input + max_output_tokens * rates.output) / MILLION

    def tool_reservation(self, calls: dict[str, int], containers: dict[str, int]) -> Decimal:
        """What ``calls`` hosted tool calls and ``containers`` containers would cost."""
        return self._per_call(calls, self.tool_prices) + self._per_call(
            containers, self.container_prices
        )

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
            + self._per_call(usage.tool_calls, self.tool_prices)
            + self._per_call(usage.containers, self.container_prices)
        )

    @staticmethod
    def _per_call(calls: dict[str, int], prices: dict[str, Decimal]) -> Decimal:
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
    def __init__(self, prices: list[ModelPrice]) -> None:
        self._prices = sorted(prices, key=lambda p: specificity(p.pattern))
        self._found: dict[str, ModelPrice | None] = {}

    def find(self, model: str) -> ModelPrice | None:
        try:
            return self._found[model]
        except KeyError:
            pass
        match = next((p for p in self._prices if fnmatchcase(model, p.pattern)), None)
        if len(self._found) < 10_000:  # model names come from clients: bound the memo
            self._found[model] = match
        return match

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
        base=_rates(row),
        long_context_threshold=row.long_context_threshold,
        long=_rates(row, "long_") if has_long else None,
        tool_prices={name: Decimal(str(v)) for name, v in (row.tool_prices or {}).items()},
        container_prices={
            name: Decimal(str(v)) for name, v in (row.container_prices or {}).items()
        },
        default_max_output_tokens=row.default_max_output_tokens,
    )
