"""Budget alerts: once per period and threshold, delivered with retries."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from accounts import services as key_services
from accounts.models import Team
from billing import alerts
from billing.models import BudgetAlert
from tests.usage import record_usage

pytestmark = pytest.mark.django_db


class Webhook:
    """A receiver on loopback that fails the first ``failures`` POSTs with a 500."""

    def __init__(self, failures: int = 0) -> None:
        self.received: list[dict] = []
        self.failures = failures
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 500 if hook.failures > 0 else 200
                hook.failures -= 1
                if status == 200:
                    hook.received.append(orjson.loads(body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook(failures=1)
    yield hook
    hook.close()


def spend(key, usd: str, when: datetime, name: str) -> None:
    record_usage(
        request_id=name, api_key=key, team=key.team, model="m", endpoint="/v1/messages",
        cost_usd=Decimal(usd), created_at=when,
    )  # fmt: skip


def test_thresholds_alert_once_per_period_and_are_delivered_with_retries(webhook):
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    key, _ = key_services.create_key(name="alerting", budget_usd=Decimal(10), budget_period="day")
    key.alert_webhook_url = webhook.url
    key.save()
    spend(key, "4.00", now - timedelta(hours=1), "a")
    assert alerts.check_budget_alerts(now) == []
    spend(key, "4.50", now - timedelta(minutes=5), "b")  # 85 %
    created = alerts.check_budget_alerts(now)
    assert [BudgetAlert.objects.get(pk=i).threshold for i in created] == [50, 80]
    assert alerts.check_budget_alerts(now) == []  # never twice in a period

    first = created[0]
    assert alerts.deliver(first) is False  # the webhook answered 500: kept for a retry
    alert = BudgetAlert.objects.get(pk=first)
    assert alert.attempts == 1 and "500" in alert.last_error and alert.delivered_at is None
    assert alerts.deliver(first) is True
    assert alerts.deliver(created[1]) is True
    assert alerts.deliver(first) is True  # delivered already: not sent again
    assert [(p["threshold_percent"], p["key"]) for p in webhook.received] == [
        (50, "alerting"),
        (80, "alerting"),
    ]
    assert webhook.received[1]["spent_usd"] == "8.50000000"

    spend(key, "2.00", now, "c")
    assert [BudgetAlert.objects.get(pk=i).threshold for i in alerts.check_budget_alerts(now)] == [
        100
    ]
    # the next day is a new period: it starts from zero again
    assert alerts.check_budget_alerts(now + timedelta(days=1)) == []


def test_team_budgets_alert_too():
    now = datetime.now(UTC)
    team = Team.objects.create(name="t", budget_usd=Decimal(1), budget_period="month")
    key, _ = key_services.create_key(name="member", team=team)
    spend(key, "0.60", now, "t1")
    (alert_id,) = alerts.check_budget_alerts(now)
    alert = BudgetAlert.objects.get(pk=alert_id)
    assert alert.subject == f"team:{team.pk}" and alert.threshold == 50
    assert alerts.deliver(alert_id) is True  # no webhook configured: nothing to send
