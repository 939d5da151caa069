"""Budget alerts at 50, 80 and 100 %: recorded once per period and threshold, then delivered
to the key's or team's webhook with retries. The admin lists them (Billing → Budget alerts).
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import budgets
from billing.models import BudgetAlert, UsageDaily

THRESHOLDS = (50, 80, 100)


def check_budget_alerts(now: datetime | None = None) -> list[int]:
    """Record the thresholds crossed this period; returns the ids of new alerts."""
    now = now or datetime.now(UTC)
    created = []
    for budget, holder in budgets.holders():
        if budget.limit_usd <= 0:
            continue
        spent = UsageDaily.objects.spent(budget, now)
        percent = spent * 100 / budget.limit_usd
        for threshold in THRESHOLDS:
            if percent < threshold:
                break
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        subject=budget.subject,
                        api_key=holder if budget.scope == "key" else None,
                        team=holder if budget.scope == "team" else None,
                        period=budget.period_name(now), threshold=threshold,
                        spent_usd=spent, limit_usd=budget.limit_usd,
                        webhook_url=holder.alert_webhook_url,
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
