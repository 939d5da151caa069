"""Writing usage in batches: a replayed batch inserts nothing twice."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from accounts import services as key_services
from billing import services
from billing.models import UsageEvent

pytestmark = pytest.mark.django_db


def event(request_id: str, **fields) -> dict:
    return {"request_id": request_id, "model": "m", "endpoint": "/v1/messages",
            "cost_usd": "0.5", "created_at": datetime.now(UTC).isoformat(), **fields}  # fmt: skip


def test_a_replayed_batch_inserts_nothing():
    batch = [event("r1"), event("r2")]
    assert services.record_usage_batch(batch) == 2
    assert services.record_usage_batch(batch) == 0
    assert services.record_usage_batch([event("r2"), event("r3")]) == 1
    assert UsageEvent.objects.count() == 3
    assert UsageEvent.objects.get(request_id="r1").cost_usd == Decimal("0.5")


def test_unknown_fields_are_ignored_and_last_use_only_moves_forward():
    key, _ = key_services.create_key(name="k")
    services.record_usage_batch(
        [event("a", api_key_id=key.pk, created_at="2026-11-22T10:00:00+00:00", extra="x")]
    )
    services.record_usage_batch(
        [event("b", api_key_id=key.pk, created_at="2026-11-22T09:00:00+00:00")]
    )
    key.refresh_from_db()
    assert key.last_used_at == datetime(2026, 11, 22, 10, tzinfo=UTC)
