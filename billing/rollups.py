"""The daily rollups (``UsageDaily``): kept by the usage writer, read by every spend query.

``add`` runs in the transaction that inserted the raw rows, with the records that INSERT
returned, so a batch delivered twice adds nothing twice. Counters saturate at bigint instead of
overflowing: a clamped event (a provider's absurd token count) must not make the next event of
its group unstorable.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date
from decimal import Decimal

from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.dateparse import parse_datetime

from billing.models import UsageDaily
from billing.records import BIGINT_MAX, UsageRecord

GRAIN = ("day", "api_key_id", "person_id", "team_id", "provider_id", "model", "client", "kind")
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
          "reasoning_tokens")  # fmt: skip
COUNTERS = ("requests", *TOKENS)
TABLE = UsageDaily._meta.db_table


def day_of(record: UsageRecord) -> date:
    moment = parse_datetime(record.created_at)
    if moment is None:
        raise ValueError(f"created_at {record.created_at!r} is not a date and time")
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()


def _grain(record: UsageRecord) -> tuple:
    return (day_of(record), record.api_key_id or 0, record.person_id or 0, record.team_id or 0,
            record.provider_id or 0, record.model, record.client, record.kind)  # fmt: skip


def add(connection: BaseDatabaseWrapper, records: Iterable[UsageRecord]) -> None:
    """Add the records to their days' rows: one upsert, groups in a fixed order (two writers
    lock rows in the same order, so they never deadlock)."""
    groups: dict[tuple, list] = {}
    for record in records:
        sums = groups.setdefault(_grain(record), [0] * len(COUNTERS) + [Decimal(0)])
        sums[0] += 1
        for index, name in enumerate(TOKENS, 1):
            sums[index] = min(BIGINT_MAX, sums[index] + getattr(record, name))
        sums[-1] += Decimal(record.cost_usd)
    if not groups:
        return
    columns = (*GRAIN, *COUNTERS, "cost_usd")
    cost_field = UsageDaily._meta.get_field("cost_usd")
    params: list = []
    for grain in sorted(groups, key=lambda g: (g[0].isoformat(), *g[1:])):
        *counts, cost = groups[grain]
        params += [connection.ops.adapt_datefield_value(grain[0]), *grain[1:], *counts,
                   cost_field.get_db_prep_save(cost, connection)]  # fmt: skip
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    sql = upsert_sql(", ".join([row] * len(groups)))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _saturating(name: str) -> str:
    return (
        f"{name} = CASE WHEN {TABLE}.{name} > {BIGINT_MAX} - excluded.{name} "
        f"THEN {BIGINT_MAX} ELSE {TABLE}.{name} + excluded.{name} END"
    )


def upsert_sql(source: str) -> str:
    """INSERT INTO the rollups ``VALUES ...`` or ``SELECT ... WHERE ...`` (SQLite needs the
    WHERE before ON CONFLICT), adding to the rows that exist."""
    columns = ", ".join((*GRAIN, *COUNTERS, "cost_usd"))
    updates = [_saturating(name) for name in COUNTERS]
    updates.append(f"cost_usd = {TABLE}.cost_usd + excluded.cost_usd")
    keyword = "" if source.lstrip().upper().startswith("SELECT") else "VALUES "
    return (
        f"INSERT INTO {TABLE} ({columns}) {keyword}{source} "
        f"ON CONFLICT ({', '.join(GRAIN)}) DO UPDATE SET {', '.join(updates)}"
    )


def from_events_sql(vendor: str, where: str) -> str:
    """Roll up the raw rows matching ``where`` (an SQL condition on billing_usageevent) into
    the daily rows: the backfill and ``generateusage``."""
    if vendor == "postgresql":
        day = "(created_at AT TIME ZONE 'UTC')::date"

        def total(name: str) -> str:
            return f"LEAST(SUM({name}), {BIGINT_MAX})"
    else:
        day = "date(created_at)"

        def total(name: str) -> str:  # SUM raises on an integer overflow in SQLite
            return f"CAST(MIN(TOTAL({name}), {BIGINT_MAX}) AS INTEGER)"

    sums = ", ".join(total(name) for name in TOKENS)
    # Our own names; ``where`` is the caller's SQL, never input.
    select = (
        f"SELECT {day}, COALESCE(api_key_id, 0), COALESCE(person_id, 0), "  # noqa: S608
        f"COALESCE(team_id, 0), COALESCE(provider_id, 0), model, client, kind, COUNT(*), "
        f"{sums}, SUM(cost_usd) FROM billing_usageevent WHERE {where} "
        f"GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
    )
    return upsert_sql(select)
