"""Issue 13, item 4: the daily rollups. Kept by the usage writer in the raw rows'
transaction (only for rows it inserted), read by every spend query, backfilled by a migration,
untouched by retention; ``generateusage`` makes volume. On PostgreSQL the spend queries of the
dashboard, the spend API and a budget rebuild are shown by EXPLAIN to read the rollups only."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts import services as key_services
from billing import alerts, budgets, services
from billing.models import UsageDaily, UsageDeadLetter, UsageEvent
from billing.records import BIGINT_MAX, UsageRecord
from llmproxy.gateway import limits

pytestmark = pytest.mark.django_db(transaction=True)
NOW = datetime.now(UTC)


def event(request_id: str, key=None, *, cost: str = "0.5", when: datetime = NOW, **fields):
    values = {"model": "m", "input_tokens": 100, "output_tokens": 10, **fields}
    return UsageRecord.build(
        request_id=request_id, endpoint="/v1/messages", api_key_id=key.pk if key else None,
        team_id=key.team_id if key else None, cost_usd=cost, created_at=when.isoformat(),
        **values,
    )  # fmt: skip


def rollup_totals() -> dict:
    return UsageDaily.objects.aggregate(
        requests=Sum("requests"), cost=Sum("cost_usd"), input=Sum("input_tokens")
    )


def raw_totals() -> dict:
    return {
        "requests": UsageEvent.objects.count(),
        "cost": UsageEvent.objects.aggregate(total=Sum("cost_usd"))["total"],
        "input": UsageEvent.objects.aggregate(total=Sum("input_tokens"))["total"],
    }


def test_the_writer_keeps_the_rollups_for_the_rows_it_inserted_only():
    key, _ = key_services.create_key(name="k")
    batch = [event(f"e{i}", key, model="a" if i % 2 else "b") for i in range(6)]
    assert services.record_usage_batch(batch) == 6
    assert services.record_usage_batch(batch) == 0  # a replayed batch adds nothing
    assert services.record_usage_batch([*batch[:2], event("e6", key)]) == 1
    assert rollup_totals() == raw_totals()
    assert UsageDaily.objects.count() == 3  # models a, b and m on one day
    row = UsageDaily.objects.get(model="a")
    assert (row.requests, row.api_key_id, row.day) == (3, key.pk, NOW.date())
    # A batch stored row by row (one row refused) rolls up only what went in.
    poisoned = [
        event("f1", key),
        event("f2", key, when=NOW).__class__(
            request_id="f2", model="m", endpoint="/v1/messages", created_at="not a date"
        ),
    ]
    services.record_usage_batch(poisoned)
    assert rollup_totals() == raw_totals()
    assert UsageDeadLetter.objects.filter(request_id="f2").exists()


def test_counters_saturate_instead_of_failing_the_next_event():
    services.record_usage_batch([event("big1", input_tokens=BIGINT_MAX)])
    services.record_usage_batch([event("big2", input_tokens=BIGINT_MAX), event("small")])
    assert UsageEvent.objects.count() == 3 and not UsageDeadLetter.objects.exists()
    assert UsageDaily.objects.get().input_tokens == BIGINT_MAX


def test_spend_reads_the_rollups_and_retention_changes_no_total(admin_user, settings):
    key, _ = key_services.create_key(name="k", budget_usd=Decimal(100), budget_period="total")
    old, recent = NOW - timedelta(days=40), NOW - timedelta(hours=1)
    services.record_usage_batch([event(f"old{i}", key, when=old) for i in range(3)])
    services.record_usage_batch([event(f"new{i}", key, when=recent) for i in range(2)])
    budget = budgets.of_key(key)
    api = APIClient()
    api.force_authenticate(admin_user)

    def totals():
        return (
            UsageDaily.objects.spent(budget, NOW),
            limits.spent_in_period(budget, NOW.timestamp()),
            api.get("/api/spend?by=key").json(),
            api.get(f"/api/spend?by=day&since={(NOW - timedelta(days=60)).date()}").json(),
        )

    before = totals()
    assert before[0] == Decimal("2.5")
    assert services.prune_usage(days=30) == 3
    assert UsageEvent.objects.count() == 2
    assert totals() == before
    # A late copy of a pruned event is not counted twice.
    settings.LLMPROXY_USAGE_RETENTION_DAYS = 30
    assert services.record_usage_batch([event("old0", key, when=old)]) == 0
    assert UsageDaily.objects.spent(budget, NOW) == Decimal("2.5")
    assert UsageDeadLetter.objects.filter(request_id="old0").exists()
    key.budget_usd = Decimal(4)
    key.save()
    assert len(alerts.check_budget_alerts(NOW)) == 1  # 62.5 % of $4: the 50 % alert
    assert "prune-usage" in settings.CELERY_BEAT_SCHEDULE


def test_pruneusage_command(settings):
    services.record_usage_batch([event("a", when=NOW - timedelta(days=10)), event("b")])
    with pytest.raises(Exception, match="no retention"):
        call_command("pruneusage")
    call_command("pruneusage", days=5)
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["b"]
    assert rollup_totals()["requests"] == 2


def test_the_backfill_migration_rolls_up_existing_rows():
    key, _ = key_services.create_key(name="k")
    services.record_usage_batch(
        [event(f"e{i}", key, when=NOW - timedelta(days=i)) for i in range(5)]
    )
    expected = sorted(UsageDaily.objects.values_list("day", "requests", "cost_usd"))
    UsageDaily.objects.all().delete()  # as before the rollups existed
    migration = importlib.import_module("billing.migrations.0011_backfill_usage_daily")
    migration.backfill(None, SimpleNamespace(connection=connection))
    assert sorted(UsageDaily.objects.values_list("day", "requests", "cost_usd")) == expected


def test_generateusage_makes_rows_and_their_rollups():
    call_command("generateusage", events=3000, days=10, keys=4, teams=2)
    assert UsageEvent.objects.count() == 3000
    assert rollup_totals() == raw_totals()
    assert UsageDaily.objects.values("api_key_id").distinct().count() == 4


def _spend_queries(client, api, budget) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert client.get("/dashboard/").status_code == 200
        for by in ("day", "key", "team", "model"):
            assert api.get(f"/api/spend?by={by}").status_code == 200
        limits.spent_in_period(budget, NOW.timestamp())
    return [query["sql"] for query in captured.captured_queries if "SUM(" in query["sql"]]


def test_spend_queries_use_the_rollups_not_the_raw_table(postgres, admin_user, client):
    """EXPLAIN of every aggregate the dashboard, the spend API and a budget rebuild run."""
    key, _ = key_services.create_key(name="k", budget_usd=Decimal(10), budget_period="month")
    call_command("generateusage", events=20000, days=60, keys=20, teams=3)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usageevent; ANALYZE billing_usagedaily")
    client.force_login(admin_user)
    api = APIClient()
    api.force_authenticate(admin_user)
    queries = _spend_queries(client, api, budgets.of_key(key))
    assert len(queries) >= 8
    with connection.cursor() as cursor:
        for sql in queries:
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "billing_usagedaily" in plan and "billing_usageevent" not in plan, (sql, plan)
