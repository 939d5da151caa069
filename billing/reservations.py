"""What admission holds against a budget while a call runs, in counter units.

All of the reservation arithmetic lives here. The limiter only adds and compares integers;
the gateway only says what the request declares (its body size, output limit, hosted tools).
Reserving before forwarding is what keeps concurrent requests from overshooting a budget: a
check of recorded spend alone lets every request in flight pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from billing.pricing import MILLION, ModelPrice, per_call
from billing.usage import Usage

UNIT = Decimal("0.00000001")  # counters count 1e-8 USD, the ledger's precision
ZERO = Decimal(0)
# Never fewer prompt tokens than body bytes / 3: about what JSON-wrapped text of any script
# costs (images are over-counted).
BYTES_PER_TOKEN = 3


def to_units(usd: Decimal) -> int:
    return int((usd / UNIT).to_integral_value())


def from_units(units: int) -> Decimal:
    return Decimal(units) * UNIT


@dataclass(frozen=True)
class Declared:
    """What a request declares that bounds its cost."""

    body_bytes: int
    max_output_tokens: int | None = None
    hosted_tools: Iterable[str] = ()
    tool_limits: Mapping[str, int] = field(default_factory=dict)  # Anthropic's max_uses
    container_memory: str = "1g"  # OpenAI code interpreter containers are priced by size
    # Prompt tokens the provider holds for this request (previous_response_id and the like)
    # that the body does not carry.
    held_prompt_tokens: int = 0


def prompt_tokens(declared: Declared) -> int:
    """The prompt the request may make the provider read: its body, and what it holds."""
    return declared.body_bytes // BYTES_PER_TOKEN + declared.held_prompt_tokens


def reserve(price: ModelPrice, declared: Declared, *, expected: bool) -> int:
    """Units to hold: the request's worst case, or its expected cost in "expected" mode."""
    prompt = prompt_tokens(declared)
    output = (
        declared.max_output_tokens
        or price.default_max_output_tokens
        or settings.LLMPROXY_DEFAULT_MAX_OUTPUT_TOKENS
    )
    return to_units(
        tokens_cost(price, prompt, output, expected) + hosted_tools_cost(price, declared)
    )


def tokens_cost(price: ModelPrice, prompt_tokens: int, max_output_tokens: int, expected: bool):
    """Worst case: every prompt token at the dearest input rate (a 1-hour cache write costs
    twice plain input) and every allowed output token. Expected: plain input rates and at
    most LLMPROXY_EXPECTED_OUTPUT_TOKENS output tokens, for keys that accept a bounded
    overshoot (docs/operations.md)."""
    rates = price.rates_for(Usage(input_tokens=prompt_tokens))
    if expected:
        output = min(max_output_tokens, settings.LLMPROXY_EXPECTED_OUTPUT_TOKENS)
        return (prompt_tokens * rates.input + output * rates.output) / MILLION
    dearest_input = max(rates.input, rates.cache_write_5m, rates.cache_write_1h)
    return (prompt_tokens * dearest_input + max_output_tokens * rates.output) / MILLION


def hosted_tools_cost(price: ModelPrice, declared: Declared) -> Decimal:
    """The hosted tool calls the request may make: each tool's max_uses, else a configured
    number of calls; a code interpreter holds one container of its memory size."""
    calls: dict[str, int] = {}
    containers: dict[str, int] = {}
    for tool in declared.hosted_tools:
        if tool == "code_interpreter":
            containers[declared.container_memory] = 1  # one container per response
        else:
            calls[tool] = declared.tool_limits.get(tool, settings.LLMPROXY_RESERVED_TOOL_CALLS)
    if not calls and not containers:
        return ZERO
    return per_call(calls, price.tool_prices) + per_call(containers, price.container_prices)
