"""Writing usage in batches: typed records, clamped where they are built; a replayed batch
inserts nothing twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts import services as key_services
from billing import services, tasks
from billing.models import UsageDeadLetter, UsageEvent
from billing.records import BIGINT_MAX, UsageRecord, clean_text

pytestmark = pytest.mark.django_db


def record(request_id: str, **fields) -> UsageRecord:
    values = {"model": "m", "endpoint": "/v1/messages", "cost_usd": "0.5",
              "created_at": datetime.now(UTC).isoformat(), **fields}  # fmt: skip
    return UsageRecord.build(request_id=request_id, **values)


def test_a_replayed_batch_inserts_nothing():
    batch = [record("r1"), record("r2")]
    assert services.record_usage_batch(batch) == 2
    assert services.record_usage_batch(batch) == 0
    assert services.record_usage_batch([record("r2"), record("r3")]) == 1
    assert UsageEvent.objects.count() == 3
    assert UsageEvent.objects.get(request_id="r1").cost_usd == Decimal("0.5")


def test_insert_parameters_are_what_djangos_own_insert_sends():
    """The usage writer prepares plain values itself (services.event_params); for every
    field, the parameters must equal Django's preparation of the model instance."""
    from django.db import connection

    key, _ = key_services.create_key(name="k")
    full = record(
        "p1", api_key_id=key.pk, client="claude-code", session_id="s", status=200,
        input_tokens=12, output_tokens=BIGINT_MAX, cache_read_tokens=3, partial=True,
        estimated=True, tool_calls={"web_search": 2}, ttft_ms=5, latency_ms=9,
        error="x" * 10, cost_usd="1.23456789",
    )  # fmt: skip
    for sample in (full, record("p2")):
        event = UsageEvent(**sample.row())
        expected = [
            field.get_db_prep_save(getattr(event, field.attname), connection)
            for field in services._event_fields()
        ]
        ours = services.event_params(sample, connection)
        # PostgreSQL wraps JSON in psycopg's Jsonb, which compares by identity: by content.
        assert [getattr(v, "obj", v) for v in ours] == [getattr(v, "obj", v) for v in expected]
        assert [type(v) for v in ours] == [type(v) for v in expected]
    assert services.record_usage_batch([full]) == 1
    stored = UsageEvent.objects.get(request_id="p1")
    assert (stored.output_tokens, stored.tool_calls, stored.partial) == (
        BIGINT_MAX,
        {"web_search": 2},
        True,
    )


def test_last_use_only_moves_forward():
    key, _ = key_services.create_key(name="k")
    services.record_usage_batch(
        [record("a", api_key_id=key.pk, created_at="2026-11-22T10:00:00+00:00")]
    )
    services.record_usage_batch(
        [record("b", api_key_id=key.pk, created_at="2026-11-22T09:00:00+00:00")]
    )
    key.refresh_from_db()
    assert key.last_used_at == datetime(2026, 11, 22, 10, tzinfo=UTC)


def test_unknown_fields_are_refused_loudly_not_dropped():
    with pytest.raises(TypeError):
        record("x", requests_per_minute=5)
    wire = record("y").to_wire()
    with pytest.raises(msgspec.ValidationError, match="unknown field `extra`"):
        UsageRecord.from_wire({**wire, "extra": "x"})
    # In a batch, the malformed event is dead-lettered, not allowed to fail the others.
    assert tasks.record_usage_batch([{**wire, "extra": "x"}, record("z").to_wire()]) == 1
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["z"]
    letter = UsageDeadLetter.objects.get()
    assert letter.request_id == "y" and "unknown field `extra`" in letter.error
    assert json.loads(letter.data)["extra"] == "x"
    # The wire form of a record reads back as the same record.
    assert UsageRecord.from_wire(wire) == record("y", created_at=wire["created_at"])


def test_values_no_column_can_hold_are_clamped_and_noted():
    odd = record(
        "odd\x00id",
        model="claude\x00-x" + "y" * 500,
        input_tokens=2**64 - 1,
        output_tokens=-3,
        reasoning_tokens=True,
        latency_ms=2**40,
        cost_usd="1e30",
        tool_calls={"web\x01search": 2**70},
        session_id="s\ud800",
    )
    assert odd.request_id == "oddid" and "\x00" not in odd.model and len(odd.model) == 200
    assert (odd.input_tokens, odd.output_tokens, odd.reasoning_tokens) == (BIGINT_MAX, 0, 0)
    assert odd.tool_calls == {"websearch": BIGINT_MAX}
    assert odd.cost_usd == "999999.99999999"
    assert odd.error.startswith("recorded with values clamped: input_tokens, output_tokens")
    assert services.record_usage_batch([odd]) == 1  # the database takes every value
    stored = UsageEvent.objects.get(request_id="oddid")
    assert stored.input_tokens == BIGINT_MAX and stored.session_id == "s?"


@given(text=st.text(), limit=st.integers(min_value=0, max_value=50), keep_lines=st.booleans())
def test_clean_text_takes_out_control_characters_and_surrogates_only(text, limit, keep_lines):
    """The usage record's text cleaning (with its fast path for plain ASCII) against its
    definition: control characters out (newlines and tabs kept on request), lone
    surrogates replaced, then cut to the limit."""
    allowed = "\t\n\r" if keep_lines else ""
    expected = "".join(c for c in text if c in allowed or not (c < " " or c == "\x7f"))
    expected = expected.encode("utf-8", "replace").decode("utf-8")[:limit]
    assert clean_text(text, limit, keep_lines=keep_lines) == expected
