"""Budget alerts at 50, 80 and 100 %: recorded once per period and threshold, then delivered
to the key's or team's webhook with retries. The admin lists them (Billing → Budget alerts).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import ApiKey, Team
from billing.models import BudgetAlert, UsageEvent
from billing.periods import period_key, period_start

THRESHOLDS = (50, 80, 100)


def _spent(scope: dict, period: str, now: datetime) -> Decimal:
    start = period_start(period, now)
    total = UsageEvent.objects.filter(created_at__gte=start, **scope).aggregate(t=Sum("cost_usd"))
    return total["t"] or Decimal(0)


def _subjects():
    for key in ApiKey.objects.active().filter(budget_usd__gt=0):
        yield f"key:{key.pk}", key, None, {"api_key_id": key.pk}, key
    for team in Team.objects.filter(budget_usd__gt=0):
        yield f"team:{team.pk}", None, team, {"team_id": team.pk}, team


def check_budget_alerts(now: datetime | None = None) -> list[int]:
    """Record the thresholds crossed this period; returns the ids of new alerts."""
    now = now or datetime.now(UTC)
    created = []
    for subject, key, team, scope, owner in _subjects():
        spent = _spent(scope, owner.budget_period, now)
        percent = spent * 100 / owner.budget_usd
        for threshold in THRESHOLDS:
            if percent < threshold:
                break
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        subject=subject, api_key=key, team=team,
                        period=period_key(owner.budget_period, now), threshold=threshold,
                        spent_usd=spent, limit_usd=owner.budget_usd,
                        webhook_url=owner.alert_webhook_url,
                    )  # fmt: skip
            except IntegrityError:
                continue  # already recorded this period: never sent twice
            created.append(alert.pk)
    return created


def deliver(alert_id: int, timeout: float = 10.0) -> bool:
    """POST the alert to its webhook; True when delivered (or nowhere to deliver)."""
    alert = BudgetAlert.objects.select_related("api_key", "team").get(pk=alert_id)
    if alert.delivered_at is not None or not alert.webhook_url:
        return True
    payload = {
        "event": "budget.threshold",
        "subject": alert.subject,
        "key": alert.api_key.name if alert.api_key else None,
        "key_prefix": alert.api_key.prefix if alert.api_key else None,
        "team": alert.team.name if alert.team else None,
        "period": alert.period,
        "threshold_percent": alert.threshold,
        "spent_usd": str(alert.spent_usd),
        "limit_usd": str(alert.limit_usd),
    }
    alert.attempts += 1
    try:
        response = httpx.post(alert.webhook_url, json=payload, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        alert.last_error = f"{type(exc).__name__}: {exc}"[:300]
        alert.save(update_fields=["attempts", "last_error"])
        return False
    alert.delivered_at = timezone.now()
    alert.last_error = ""
    alert.save(update_fields=["attempts", "last_error", "delivered_at"])
    return True
