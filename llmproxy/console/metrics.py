"""GET /metrics: Prometheus exposition of the gateway, its Celery workers and budgets.

Protected: a bearer token (LLMPROXY_METRICS_TOKEN) when one is set, and the scraper's address
must be in LLMPROXY_METRICS_ALLOW_FROM (loopback only by default). Budget utilization (spent
over limit in the current period, per person and team: no per-key series) is computed at
scrape time and kept for BUDGETS_TTL seconds, so a fast scraper costs the database little.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from datetime import UTC, datetime

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from accounts.models import Person, Team
from billing import budgets
from billing.models import UsageDaily

BUDGETS_TTL = 30.0


class BudgetCollector:
    """llmproxy_budget_utilization_ratio{scope, name}: spent / limit this period."""

    def __init__(self) -> None:
        self._cached: tuple[float, list] = (0.0, [])

    def collect(self):
        family = GaugeMetricFamily(
            "llmproxy_budget_utilization_ratio",
            "Spend in the current period over the budget, per person and team.",
            labels=["scope", "name"],
        )
        for labels, value in self._values():
            family.add_metric(labels, value)
        yield family

    def _values(self) -> list:
        stamp, values = self._cached
        if time.monotonic() - stamp < BUDGETS_TTL:
            return values
        now = datetime.now(UTC)
        values = []
        for budget, holder in budgets.holders():
            if budget.scope == "key" or budget.limit_usd <= 0:
                continue
            spent = UsageDaily.objects.spent(budget, now)
            name = holder.name if isinstance(holder, Team) else _person_name(holder)
            values.append(([budget.scope, name], float(spent / budget.limit_usd)))
        self._cached = (time.monotonic(), values)
        return values


def _person_name(person: Person) -> str:
    return person.user.get_username()


budget_collector = BudgetCollector()


def _registry():
    if settings.LLMPROXY_METRICS_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return registry


def allowed(request) -> bool:
    token = settings.LLMPROXY_METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(network, strict=False)
        for network in settings.LLMPROXY_METRICS_ALLOW_FROM
    )


@require_GET
def metrics_view(request):
    if not allowed(request):
        return HttpResponseForbidden("metrics: not from an allowed network or without the token")
    registry = _registry()
    body = generate_latest(registry)
    extra = CollectorRegistry()
    extra.register(budget_collector)
    body += generate_latest(extra)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
