"""Prices and the usage ledger."""

from __future__ import annotations

import copy
import functools
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec
from django.apps import apps as global_apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, router, transaction
from django.db.models import Q

from accounts.models import ApiKey
from billing import rollups
from billing.models import Price, UsageDeadLetter, UsageEvent
from billing.records import UsageRecord, clean_text
from llmproxy.core import metrics

PRICES_FILE = Path(__file__).with_name("prices.json")

_MONEY_FIELDS = [
    "input_per_mtok",
    "output_per_mtok",
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "cache_read_per_mtok",
    "long_input_per_mtok",
    "long_output_per_mtok",
    "long_cache_write_5m_per_mtok",
    "long_cache_write_1h_per_mtok",
    "long_cache_read_per_mtok",
]
_REQUIRED = {"model_pattern", "input_per_mtok", "output_per_mtok"}


class PriceFileError(ValueError):
    pass


def _price_fields(row: dict, index: int) -> dict:
    missing = _REQUIRED - row.keys()
    if missing:
        raise PriceFileError(f"price #{index}: missing {', '.join(sorted(missing))}")
    fields: dict = {
        "provider_kind": row.get("provider_kind", ""),
        "long_context_threshold": row.get("long_context_threshold"),
        "tool_prices": row.get("tool_prices") or {},
        "container_prices": row.get("container_prices") or {},
        "default_max_output_tokens": row.get("default_max_output_tokens"),
        "source": (row.get("source") or "")[:300],
    }
    for name in _MONEY_FIELDS:
        value = row.get(name)
        if value is None:
            fields[name] = None if name.startswith("long_") else Decimal(0)
            continue
        try:
            fields[name] = Decimal(str(value))
        except InvalidOperation:
            raise PriceFileError(f"price #{index} {name}: not a number: {value!r}") from None
    return fields


def _read_price_file(path: Path) -> list[tuple[str, dict]]:
    """(model pattern, fields) for every row of a price file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PriceFileError(f"cannot read price file {path}: {exc}") from exc
    rows = data.get("prices") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise PriceFileError(f"{path}: expected an object with a 'prices' list")
    return [(row.get("model_pattern"), _price_fields(row, index)) for index, row in enumerate(rows)]


@transaction.atomic
def load_prices(path: Path = PRICES_FILE) -> tuple[int, int]:
    """Upsert every row of the price file by model pattern; returns (created, updated)."""
    created = updated = 0
    for pattern, fields in _read_price_file(path):
        fields = dict(fields)
        _, was_created = Price.objects.update_or_create(
            model_pattern=pattern,
            provider_kind=fields.pop("provider_kind"),
            provider=None,
            defaults=fields,
        )
        created += was_created
        updated += not was_created
    return created, updated


@functools.cache
def _shipped_rows() -> list[tuple[str, dict]]:
    return _read_price_file(PRICES_FILE)


def add_shipped_prices(*, using: str = DEFAULT_DB_ALIAS, model: type[Price] = Price) -> int:
    """Insert the shipped rows (billing/prices.json) whose provider kind and model pattern are
    not in the table yet; a row that is there, edited by an admin or not, is left as it is.
    Returns how many it inserted (a row another process inserted meanwhile is skipped, yet
    counted). One query and one bulk insert: it runs after every ``migrate`` (and every test
    database flush).
    ``model`` may be the migration state's Price."""
    prices = model._default_manager.using(using)
    known = set(prices.filter(provider__isnull=True).values_list("provider_kind", "model_pattern"))
    columns = {field.name for field in model._meta.concrete_fields}
    fresh = [
        model(
            model_pattern=pattern,
            **{k: v for k, v in copy.deepcopy(fields).items() if k in columns},
        )
        for pattern, fields in _shipped_rows()
        if (fields["provider_kind"], pattern) not in known
    ]
    prices.bulk_create(fresh, ignore_conflicts=True)
    return len(fresh)


def add_shipped_prices_after_migrate(
    sender, *, using, apps=global_apps, verbosity=1, stdout=None, **_
):
    """post_migrate receiver (billing's AppConfig.ready): a migrated database has prices.

    ``migrate`` sends the migration state as ``apps``; ``flush`` sends none.
    """
    try:
        model = apps.get_model("billing", "Price")
    except LookupError:  # billing migrated back to zero: no price table
        return
    if not router.allow_migrate_model(using, model):
        return
    added = add_shipped_prices(using=using, model=model)
    if added and verbosity >= 1:
        (stdout or sys.stdout).write(
            f"Prices: {added} shipped rows added from {PRICES_FILE.name}\n"
        )


# A database that is down, restarting or locked: the batch is retried as a whole later
# (Celery's retry, the sink's backoff). Any other error belongs to a row and is isolated.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)

log = logging.getLogger(__name__)


def record_usage_events(events: list[dict[str, Any]]) -> int:
    """The Celery task's body: read each wire event on its own (a malformed one is
    dead-lettered, not allowed to fail the batch), then ``record_usage_batch``."""
    records = []
    for event in events:
        try:
            records.append(UsageRecord.from_wire(event))
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            _dead_letter(event, exc)
    return record_usage_batch(records)


def record_usage_batch(records: list[UsageRecord]) -> int:
    """Insert the records whose request id is new; returns how many were new.

    Idempotent: Celery redelivers a batch after a worker dies (acks_late), and a replay must
    insert nothing twice. A batch the database refuses is stored row by row, and a row it
    still refuses goes to the dead-letter table (``UsageDeadLetter``), so one bad event never
    holds up the others or the batches after them. Raises only ``TRANSIENT_ERRORS``.
    """
    records = list({record.request_id: record for record in records}.values())
    for record in _past_retention(records):
        records.remove(record)
        _dead_letter(record.to_wire(), ValueError("older than LLMPROXY_USAGE_RETENTION_DAYS"))
    if not records:
        return 0
    try:
        with transaction.atomic():
            fresh = _insert(records)
    except TRANSIENT_ERRORS:
        raise
    except Exception:
        log.warning("usage batch of %d refused; storing it row by row", len(records))
        fresh = _insert_one_by_one(records)
    _touch_keys(fresh)
    metrics.USAGE_WRITTEN.inc(len(fresh))
    return len(fresh)


def _insert_one_by_one(records: list[UsageRecord]) -> list[UsageRecord]:
    fresh = []
    for record in records:
        try:
            with transaction.atomic():
                inserted = _insert([record])
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # a foreign key fails at the commit, past _insert
            _dead_letter(record.to_wire(), exc)
        else:
            fresh += inserted
    return fresh


@functools.cache
def _event_fields() -> list:
    """UsageEvent's stored fields but the id; a usage record carries exactly their values."""
    fields = [field for field in UsageEvent._meta.concrete_fields if not field.primary_key]
    names = {field.attname for field in fields}
    if names != set(UsageRecord.__struct_fields__):
        raise RuntimeError(
            f"UsageRecord and UsageEvent differ: {names ^ set(UsageRecord.__struct_fields__)}"
        )
    return fields


# Field types whose stored value is the Python value itself when it has the plain type here
# (Django's preparation of them is a type check and a copy, 1-2 µs a field in the usage
# thread, with the GIL held). Any other value, and every other field (dates, decimals, JSON),
# goes through the field's own get_db_prep_save.
_PLAIN_TYPES = {
    "CharField": str, "TextField": str, "BooleanField": bool,
    "IntegerField": int, "BigIntegerField": int, "SmallIntegerField": int,
    "PositiveIntegerField": int, "PositiveBigIntegerField": int,
    "PositiveSmallIntegerField": int,
}  # fmt: skip


@functools.cache
def _event_preparers() -> list[tuple[str, Any, type | None, str]]:
    """Per stored field: its attribute name, its preparation, the one Python type that needs
    none but the backend's integer adaptation (None: always prepare), its internal type."""
    preparers = []
    for field in _event_fields():
        internal = field.get_internal_type()  # a foreign key's is ForeignKey: prepared
        plain = _PLAIN_TYPES.get(internal)
        preparers.append((field.attname, field.get_db_prep_save, plain, internal))
    return preparers


def event_params(record: UsageRecord, connection) -> list[Any]:
    """A record's INSERT parameters, in ``_event_fields`` order: what Django's own INSERT of
    ``UsageEvent(**record.row())`` would send (tests/billing/test_usage_batch.py checks it)."""
    data = record.row()
    adapt = connection.ops.adapt_integerfield_value  # PostgreSQL: psycopg's Int2/Int4/Int8
    params = []
    for name, prepare, plain, internal in _event_preparers():
        value = data[name]
        if value is None:
            params.append(value)
        elif plain is not None and type(value) is plain:
            params.append(adapt(value, internal) if plain is int else value)
        else:
            params.append(prepare(value, connection))
    return params


def _insert(records: list[UsageRecord]) -> list[UsageRecord]:
    """INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING request_id (PostgreSQL and
    SQLite ≥ 3.35 alike): the records this call inserted, never one another writer or an
    earlier delivery of the batch already stored; their daily rollups are added. Runs inside
    the caller's transaction."""
    connection = transaction.get_connection()
    fields = _event_fields()
    quote = connection.ops.quote_name
    values, params = [], []
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    for record in records:
        values.append(row)
        params += event_params(record, connection)
    # Names from the model's own metadata, values as parameters: nothing from the record.
    table, key = quote(UsageEvent._meta.db_table), quote("request_id")
    columns = ", ".join(quote(field.column) for field in fields)
    sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join(values)} "  # noqa: S608
    sql += f"ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted = {row[0] for row in cursor.fetchall()}
    fresh = [record for record in records if record.request_id in inserted]
    rollups.add(connection, fresh)  # same transaction: only what this INSERT stored
    return fresh


def _dead_letter(data: Any, exc: BaseException) -> None:
    """Keep an event the ledger cannot store, with the error; never raises but a
    ``TRANSIENT_ERRORS`` (then the whole batch is retried)."""
    try:
        text = json.dumps(data, ensure_ascii=True, default=str)  # NUL → \\u0000: storable
    except (TypeError, ValueError):
        text = json.dumps(repr(data))
    request_id = data.get("request_id") if isinstance(data, dict) else None
    error = f"{type(exc).__name__}: {exc}"
    log.error("usage event %r dead-lettered: %s", request_id, error)
    request_id = clean_text(request_id or "", 64)
    if UsageDeadLetter.objects.filter(request_id=request_id, data=text).exists():
        return  # a retried batch: kept once
    UsageDeadLetter.objects.create(
        request_id=request_id, data=text, error=clean_text(error, 2000, keep_lines=True)
    )
    metrics.USAGE_DEAD_LETTERED.inc()


def retention_cutoff(now: datetime | None = None, days: int | None = None) -> datetime | None:
    """The UTC midnight before which raw usage is pruned (``LLMPROXY_USAGE_RETENTION_DAYS``);
    None: kept forever."""
    days = settings.LLMPROXY_USAGE_RETENTION_DAYS if days is None else days
    if not days:
        return None
    today = (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                                microsecond=0)  # fmt: skip
    return today - timedelta(days=days)


def prune_usage(*, days: int | None = None, now: datetime | None = None, chunk: int = 5000) -> int:
    """Delete raw usage from before the retention cutoff, a chunk per transaction (no long
    lock on the table); returns how many rows. The daily rollups stay, so every total —
    budgets, the dashboard, the spend API — is what it was."""
    cutoff = retention_cutoff(now, days)
    if cutoff is None:
        return 0
    deleted = 0
    old = UsageEvent.objects.filter(created_at__lt=cutoff).order_by()
    while ids := list(old.values_list("id", flat=True)[:chunk]):
        deleted += UsageEvent.objects.filter(id__in=ids).delete()[0]
    return deleted


def _past_retention(records: list[UsageRecord]) -> list[UsageRecord]:
    """Records from before the retention cutoff: their raw rows may have been stored and
    pruned already, so storing them again could count them twice in the rollups."""
    cutoff = retention_cutoff()
    if cutoff is None:
        return []
    late = []
    for record in records:
        try:
            if rollups.day_of(record) < cutoff.date():
                late.append(record)
        except ValueError:
            continue  # no usable date: dead-lettered by the insert
    return late


def recorded_request_ids(request_ids: list[str]) -> set[str]:
    """Which of these request ids the ledger holds (the sink's delivery check)."""
    return set(
        UsageEvent.objects.filter(request_id__in=request_ids).values_list("request_id", flat=True)
    )


def _touch_keys(records: list[UsageRecord]) -> None:
    last_used: dict[int, str] = {}
    for record in records:
        if record.api_key_id is not None:
            key_id = record.api_key_id
            last_used[key_id] = max(last_used.get(key_id, ""), record.created_at)
    for key_id, moment in last_used.items():
        # update(), not save(): last-use is not policy, so no cache invalidation.
        ApiKey.objects.filter(pk=key_id).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=moment)
        ).update(last_used_at=moment)
