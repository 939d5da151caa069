"""Usage events for tests, written the way the gateway writes them (the usage writer, which
also keeps the daily rollups every spend query reads)."""

from __future__ import annotations

from datetime import datetime

from billing import services
from billing.models import UsageEvent
from billing.records import UsageRecord

_RELATED = {"api_key": "api_key_id", "team": "team_id", "person": "person_id",
            "provider": "provider_id"}  # fmt: skip


def record_usage(**fields) -> UsageEvent:
    """``UsageEvent.objects.create``'s arguments (model instances, datetimes, decimals)."""
    values = {}
    for name, value in fields.items():
        if name in _RELATED:
            values[_RELATED[name]] = value.pk if value is not None else None
        elif isinstance(value, datetime):
            values[name] = value.isoformat()
        elif name == "cost_usd":
            values[name] = str(value)
        else:
            values[name] = value
    services.record_usage_batch([UsageRecord.build(**values)])
    return UsageEvent.objects.get(request_id=values["request_id"])
