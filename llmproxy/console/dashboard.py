"""The staff dashboard: spend over time, top keys and models, budget burn, recent errors."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http import HTTPStatus

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Q, Sum
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_safe

from accounts.models import ApiKey, Team
from billing import budgets
from billing.models import UsageDaily, UsageEvent
from llmproxy.console import charts

DAYS = 30
# The chart's breakdowns: ?by=... → the rollup column it groups by.
BREAKDOWNS = {"model": "model", "team": "team_id", "key": "api_key_id"}


def _key_names(ids) -> dict:
    """A key's label wherever the dashboard shows spend per key: its name and prefix."""
    return {key.pk: str(key) for key in ApiKey.objects.filter(pk__in=[i for i in ids if i])}


def _labels(by: str, ids: set) -> dict:
    if by == "api_key_id":
        return _key_names(ids)
    if by == "team_id":
        return dict(Team.objects.filter(pk__in=[i for i in ids if i]).values_list("pk", "name"))
    return {}


def _daily(rows, by: str) -> tuple[list[str], dict[str, dict[str, Decimal]]]:
    """Spend per day and per ``by`` from the daily rollups (never the raw events)."""
    rows = list(rows.values("day", by).annotate(cost=Sum("cost_usd")).order_by("day"))
    names = _labels(by, {row[by] for row in rows})
    missing = "(deleted key)" if by == "api_key_id" else "none"
    series: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for row in rows:
        name = names.get(row[by], missing) if by != "model" else str(row[by] or "none")
        day = str(row["day"])
        series[name][day] = series[name].get(day, Decimal(0)) + (row["cost"] or Decimal(0))
    today = datetime.now(UTC).date()
    days = [str(today - timedelta(days=n)) for n in range(DAYS - 1, -1, -1)]
    return days, dict(series)


def _recent_days():
    """The rollup rows of the chart's days (today's is kept as usage is written)."""
    first = datetime.now(UTC).date() - timedelta(days=DAYS - 1)
    return UsageDaily.objects.filter(day__gte=first)


def _spent(key: ApiKey, now: datetime) -> Decimal:
    return UsageDaily.objects.spent(budgets.of_key(key), now)


def _top_keys(rows) -> list[dict]:
    top = list(
        rows.values("api_key_id")
        .annotate(cost=Sum("cost_usd"), requests=Sum("requests"))
        .order_by("-cost")[:10]
    )
    keys = ApiKey.objects.in_bulk([row["api_key_id"] for row in top if row["api_key_id"]])
    for row in top:
        key = keys.get(row["api_key_id"])
        row.update(api_key=key.pk if key else None, api_key__name=key.name if key else None,
                   api_key__prefix=key.prefix if key else None)  # fmt: skip
    return top


@staff_member_required
def overview(request):
    now = datetime.now(UTC)
    by = request.GET.get("by") if request.GET.get("by") in BREAKDOWNS else "model"
    rows = _recent_days()
    days, series = _daily(rows, BREAKDOWNS[by])
    top_models = rows.values("model").annotate(cost=Sum("cost_usd"), requests=Sum("requests"))
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
        "top_keys": _top_keys(rows),
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
    days, series = _daily(_recent_days().filter(api_key_id=key.pk), "model")
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
