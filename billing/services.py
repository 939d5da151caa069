"""Prices and the usage ledger."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import transaction

from billing.models import Price, UsageEvent

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


@transaction.atomic
def load_prices(path: Path = PRICES_FILE) -> tuple[int, int]:
    """Upsert every row of the price file by model pattern; returns (created, updated)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PriceFileError(f"cannot read price file {path}: {exc}") from exc
    rows = data.get("prices") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise PriceFileError(f"{path}: expected an object with a 'prices' list")
    created = updated = 0
    for index, row in enumerate(rows):
        _, was_created = Price.objects.update_or_create(
            model_pattern=row.get("model_pattern"), defaults=_price_fields(row, index)
        )
        created += was_created
        updated += not was_created
    return created, updated


_EVENT_FIELDS = {f.attname for f in UsageEvent._meta.concrete_fields} - {"id"}


def record_usage_batch(events: list[dict]) -> int:
    """Insert the events whose request id is new; returns how many were new.

    Idempotent: Celery redelivers a batch after a worker dies (acks_late), and a replay must
    insert nothing twice.
    """
    rows = [UsageEvent(**{k: v for k, v in e.items() if k in _EVENT_FIELDS}) for e in events]
    ids = [row.request_id for row in rows]
    with transaction.atomic():
        known = set(
            UsageEvent.objects.filter(request_id__in=ids).values_list("request_id", flat=True)
        )
        fresh = [row for row in rows if row.request_id not in known]
        UsageEvent.objects.bulk_create(fresh, ignore_conflicts=True)
    _touch_keys(events)
    return len(fresh)


def _touch_keys(events: list[dict]) -> None:
    from django.db.models import Q

    from accounts.models import ApiKey

    last_used: dict[int, str] = {}
    for event in events:
        key_id = event.get("api_key_id")
        if key_id is not None:
            last_used[key_id] = max(last_used.get(key_id, ""), event["created_at"])
    for key_id, moment in last_used.items():
        # update(), not save(): last-use is not policy, so no cache invalidation.
        ApiKey.objects.filter(pk=key_id).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=moment)
        ).update(last_used_at=moment)


def reconcile_counters() -> int:
    """Every budget's Redis counter against the ledger (Celery beat, scaled mode)."""
    from accounts.models import ApiKey, Team
    from llmproxy.gateway import limits
    from llmproxy.gateway.policy import Budget

    budgets = [
        Budget("key", key.pk, key.budget_usd, key.budget_period)
        for key in ApiKey.objects.active().filter(budget_usd__isnull=False)
    ] + [
        Budget("team", team.pk, team.budget_usd, team.budget_period)
        for team in Team.objects.filter(budget_usd__isnull=False)
    ]
    return limits.reconcile(budgets)
