"""The staff dashboard: spend over time, top keys and models, budget burn, recent errors."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http import HTTPStatus

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_safe

from accounts.models import ApiKey
from billing import budgets
from billing.models import UsageEvent
from llmproxy.console import charts

DAYS = 30
# The chart's breakdowns: ?by=... → the usage column it groups by.
BREAKDOWNS = {"model": "model", "team": "team__name", "key": "api_key"}


def _key_names(ids) -> dict:
    """A key's label wherever the dashboard shows spend per key: its name and prefix."""
    names = {key.pk: str(key) for key in ApiKey.objects.filter(pk__in=[i for i in ids if i])}
    return names | {None: "(deleted key)"}


def _daily(events, by: str) -> tuple[list[str], dict[str, dict[str, Decimal]]]:
    rows = list(
        events.annotate(day=TruncDate("created_at"))
        .values("day", by)
        .annotate(cost=Sum("cost_usd"))
        .order_by("day")
    )
    names = _key_names({row[by] for row in rows}) if by == "api_key" else {}
    series: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for row in rows:
        name = names[row[by]] if by == "api_key" else str(row[by] or "none")
        series[name][str(row["day"])] = row["cost"] or Decimal(0)
    today = datetime.now(UTC).date()
    days = [str(today - timedelta(days=n)) for n in range(DAYS - 1, -1, -1)]
    return days, dict(series)


def _spent(key: ApiKey, now: datetime) -> Decimal:
    return UsageEvent.objects.spent(budgets.of_key(key), now)


@staff_member_required
def overview(request):
    now = datetime.now(UTC)
    by = request.GET.get("by") if request.GET.get("by") in BREAKDOWNS else "model"
    events = UsageEvent.objects.filter(created_at__gte=now - timedelta(days=DAYS))
    days, series = _daily(events, BREAKDOWNS[by])
    top_keys = (
        events.values("api_key", "api_key__name", "api_key__prefix")
        .annotate(cost=Sum("cost_usd"), requests=Count("id"))
        .order_by("-cost")[:10]
    )
    top_models = events.values("model").annotate(cost=Sum("cost_usd"), requests=Count("id"))
    burn = []
    for key in ApiKey.objects.active().filter(budget_usd__gt=0).select_related("owner"):
        spent = _spent(key, now)
        burn.append(
            {
                "key": key,
                "spent": spent,
                "remaining": max(Decimal(0), key.budget_usd - spent),
                "bar": mark_safe(charts.burn_bar(spent, key.budget_usd)),  # noqa: S308 - built here
            }
        )
    burn.sort(key=lambda row: row["remaining"])
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "by": by,
        "breakdowns": list(BREAKDOWNS),
        "chart": mark_safe(charts.stacked_bars(days, series)),  # noqa: S308 - escaped in charts
        "total": sum((sum(s.values(), Decimal(0)) for s in series.values()), Decimal(0)),
        "top_keys": top_keys,
        "top_models": top_models.order_by("-cost")[:10],
        "burn": burn,
        "errors": _errors(),
    }
    return render(request, "dashboard/overview.html", context)


def _errors(limit: int = 20) -> list[UsageEvent]:
    """Recorded calls that failed: with an error text, or answered with an error status
    (a provider's 400, 413 or 429 is recorded with its status and no text)."""
    events = UsageEvent.objects.filter(~Q(error="") | Q(status__gte=400))
    rows = list(events.select_related("api_key").order_by("-created_at", "-id")[:limit])
    for event in rows:
        event.summary = event.error or _status_phrase(event.status)
    return rows


def _status_phrase(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


@staff_member_required
def key_detail(request, key_id: int):
    key = get_object_or_404(ApiKey.objects.select_related("owner", "team"), pk=key_id)
    now = datetime.now(UTC)
    events = key.usage_events.filter(created_at__gte=now - timedelta(days=DAYS))
    days, series = _daily(events, "model")
    base = request.build_absolute_uri("/").rstrip("/")
    context = {
        **admin.site.each_context(request),
        "title": f"Key {key.name}",
        "key": key,
        "chart": mark_safe(charts.stacked_bars(days, series)),  # noqa: S308 - escaped in charts
        "spent": _spent(key, now) if key.budget_usd is not None else None,
        "recent": key.usage_events.all()[:50],
        "base_url": base,
    }
    return render(request, "dashboard/key.html", context)


@require_safe
def favicon(request):
    """Browsers ask every page's host for /favicon.ico; answer "nothing" instead of a 404."""
    response = HttpResponse(status=204)
    response["Cache-Control"] = "public, max-age=86400"
    return response
