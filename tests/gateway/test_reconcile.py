"""Reconciliation: the Redis spend counters against the ledger (beat, scaled mode)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from accounts import services as key_services
from billing.budgets import Budget
from billing.reservations import to_units
from llmproxy.gateway import limits, tasks
from tests.usage import record_usage

pytestmark = pytest.mark.django_db


def test_reconcile_raises_lost_counters_and_never_lowers_them(redis_client, transactional_db):
    key, _ = key_services.create_key(name="rec", budget_usd=Decimal(5), budget_period="total")
    record_usage(
        request_id="r1", api_key=key, model="m", endpoint="/v1/messages",
        cost_usd=Decimal("0.30"), created_at=datetime.now(UTC),
    )  # fmt: skip
    budget = Budget("key", key.pk, Decimal(5), "total")
    counter, _ = limits.budget_keys(budget, time.time())
    ledger = to_units(Decimal("0.30"))

    redis_client.delete(counter)
    assert tasks.reconcile_counters() == 1
    assert int(redis_client.get(counter)) == ledger
    redis_client.set(counter, 10)  # lost increments
    assert tasks.reconcile_counters() == 1
    assert int(redis_client.get(counter)) == ledger
    redis_client.set(counter, ledger + 500)  # settled spend not yet in the ledger
    assert tasks.reconcile_counters() == 0
    assert int(redis_client.get(counter)) == ledger + 500
