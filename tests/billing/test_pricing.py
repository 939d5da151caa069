"""Pricing: the most specific pattern wins; cache, long-context and tool rates apply."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from billing.models import Price
from billing.pricing import PriceBook, model_price
from billing.usage import Usage

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_price_table():
    """These tests build their own price tables: start without the shipped rows migrate adds."""
    Price.objects.all().delete()


def price(pattern: str, **fields) -> Price:
    defaults = {"input_per_mtok": Decimal(3), "output_per_mtok": Decimal(15)}
    return Price.objects.create(model_pattern=pattern, **{**defaults, **fields})


def test_the_most_specific_pattern_wins():
    book = PriceBook(
        [
            model_price(price("claude-*", input_per_mtok=Decimal(1))),
            model_price(price("claude-opus-4*", input_per_mtok=Decimal(15))),
            model_price(price("claude-opus-4-5*", input_per_mtok=Decimal(5))),
            model_price(price("claude-opus-4-5-20251101", input_per_mtok=Decimal(4))),
        ]
    )
    assert book.find("claude-opus-4-5-20251101", "anthropic").base.input == 4
    assert book.find("claude-opus-4-5-20990101", "anthropic").base.input == 5
    assert book.find("claude-opus-4-1", "anthropic").base.input == 15
    assert book.find("claude-haiku-4-5", "anthropic").base.input == 1
    assert book.find("gpt-5", "openai") is None


def test_a_model_is_priced_by_its_own_kinds_row():
    book = PriceBook(
        [
            model_price(price("gpt-5*", provider_kind="openai", input_per_mtok=Decimal(1))),
            model_price(price("gpt-5*", provider_kind="anthropic", input_per_mtok=Decimal(9))),
            model_price(price("claude-*", provider_kind="anthropic")),
            model_price(price("local-*", provider_kind="", input_per_mtok=Decimal(2))),
        ]
    )
    assert book.find("gpt-5.5", "openai").base.input == 1
    assert book.find("gpt-5.5", "anthropic").base.input == 9
    assert book.find("claude-sonnet-4-5", "openai") is None
    assert book.find("local-7b", "openai").base.input == 2  # no kind: any kind
    assert book.kinds_of("claude-sonnet-4-5") == {"anthropic"}


def test_cost_counts_every_token_kind_and_tool_call():
    row = price(
        "claude-sonnet-4-5*",
        cache_write_5m_per_mtok=Decimal("3.75"),
        cache_write_1h_per_mtok=Decimal(6),
        cache_read_per_mtok=Decimal("0.30"),
        tool_prices={"web_search": "0.01"},
    )
    usage = Usage(
        input_tokens=1000,
        output_tokens=2000,
        cache_read_tokens=10_000,
        cache_write_5m_tokens=4000,
        cache_write_1h_tokens=1000,
        tool_calls={"web_search": 3},
    )
    expected = (
        Decimal(1000 * 3 + 2000 * 15)
        + Decimal("10000") * Decimal("0.30")
        + Decimal(4000) * Decimal("3.75")
        + Decimal(1000 * 6)
    ) / Decimal(1_000_000) + Decimal("0.03")
    assert model_price(row).cost(usage) == expected


def test_long_context_rates_apply_to_the_whole_request_above_the_threshold():
    row = price(
        "claude-sonnet-4*",
        long_context_threshold=200_000,
        long_input_per_mtok=Decimal(6),
        long_output_per_mtok=Decimal("22.5"),
    )
    priced = model_price(row)
    below = Usage(input_tokens=150_000, cache_read_tokens=50_000, output_tokens=1000)
    above = Usage(input_tokens=150_000, cache_read_tokens=50_001, output_tokens=1000)
    assert priced.cost(below) == (Decimal(150_000 * 3) + Decimal(1000 * 15)) / 1_000_000
    assert priced.cost(above) == (Decimal(150_000 * 6) + Decimal("22.5") * 1000) / 1_000_000


def test_tool_prices_match_dated_tool_types_by_prefix():
    row = price("m", tool_prices={"web_search": "0.01", "web_fetch": "0"})
    usage = Usage(tool_calls={"web_search_20250305": 2, "web_fetch": 5, "unknown": 1})
    assert model_price(row).cost(usage) == Decimal("0.02")


def test_the_shipped_price_file_covers_claude_and_gpt5():
    created, _ = services.load_prices()
    assert created > 5
    book = PriceBook([model_price(p) for p in Price.objects.all()])
    for model in ("claude-haiku-4-5-20251001", "claude-sonnet-4-5", "claude-opus-4-1", "gpt-5"):
        found = book.find(model, "openai" if model.startswith("gpt") else "anthropic")
        assert found is not None, model
        assert found.base.input > 0 and found.base.output > found.base.input
    # a second load changes nothing
    assert services.load_prices() == (0, created)
