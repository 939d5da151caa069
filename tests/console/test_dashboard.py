"""The staff dashboard: charts drawn on the server, a page per key with client setup."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts import services as key_services
from accounts.models import Team
from llmproxy.console import charts
from tests.usage import record_usage

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage():
    team = Team.objects.create(name="platform")
    key, secret = key_services.create_key(
        name="alice laptop", team=team, budget_usd=Decimal(10), budget_period="month"
    )
    now = datetime.now(UTC)  # all three inside this month's budget period, whatever the date
    rows = [("claude-opus-4-8", "2.5", ""), ("gpt-5.5", "1.25", ""),
            ("claude-opus-4-8", "0", "upstream: ConnectError")]  # fmt: skip
    for index, (model, cost, error) in enumerate(rows):
        record_usage(
            request_id=f"d{index}", api_key=key, team=team, model=model, endpoint="/v1/messages",
            cost_usd=Decimal(cost), error=error, status=502 if error else 200,
            created_at=now - timedelta(seconds=index),
        )  # fmt: skip
    return key, secret


def test_staff_see_spend_top_lists_burn_and_errors(admin_client, usage):
    _key, secret = usage
    page = admin_client.get("/dashboard/").content.decode()
    assert page.count("<rect") >= 2 and "<svg" in page and "cdn" not in page.lower()
    assert "claude-opus-4-8: $2.5000" in page  # the bar's tooltip
    assert "alice laptop" in page and "$3.7500" in page  # top keys
    assert "of $10.00" in page and "$6.2500" in page  # budget burn, remaining
    assert "upstream: ConnectError" in page  # recent errors
    assert secret not in page
    by_team = admin_client.get("/dashboard/?by=team").content.decode()
    assert "platform: $" in by_team


def test_a_key_page_shows_usage_and_client_setup(admin_client, usage):
    key, secret = usage
    page = admin_client.get(f"/dashboard/keys/{key.pk}/").content.decode()
    assert "export ANTHROPIC_BASE_URL=http://testserver" in page
    assert 'base_url = "http://testserver/v1"' in page and 'wire_api = "responses"' in page
    assert key.prefix in page and secret not in page
    assert page.count("<tr>") >= 4  # the usage rows
    assert admin_client.get("/dashboard/keys/999999/").status_code == 404


def test_the_dashboard_is_staff_only(client, usage, django_user_model):
    assert client.get("/dashboard/").status_code == 302  # to the admin login
    django_user_model.objects.create_user("alice", password="pw-alice-123")
    client.login(username="alice", password="pw-alice-123")
    assert client.get("/dashboard/").status_code == 302
    key, _ = usage
    assert client.get(f"/dashboard/keys/{key.pk}/").status_code == 302


def test_the_admin_links_to_the_dashboard(admin_client):
    assert 'href="/dashboard/"' in admin_client.get("/admin/").content.decode()


def axis(page: str, which: str) -> list[str]:
    return re.findall(rf'class="axis {which}">([^<]*)<', page)


def spend(key, cost: str, *, days_ago: int = 0, status: int = 200, error: str = "", n: int = 0):
    return record_usage(
        request_id=f"s{key.pk}-{days_ago}-{n}-{status}", api_key=key, model="claude-haiku-4-5",
        endpoint="/v1/messages", cost_usd=Decimal(cost), status=status, error=error,
        created_at=datetime.now(UTC) - timedelta(days=days_ago, seconds=n),
    )  # fmt: skip


def test_the_money_axis_shows_amounts_below_a_cent(admin_client):
    key, _ = key_services.create_key(name="cheap")
    spend(key, "0.0013")
    spend(key, "0.0004", days_ago=3)
    page = admin_client.get("/dashboard/").content.decode()
    labels = axis(page, "y")
    assert labels == ["$0.0013", "$0.0006", "$0"]  # top, middle, bottom: distinct, not "$0.00"
    assert "claude-haiku-4-5: $0.0013" in page  # the tooltip


@pytest.mark.parametrize(
    ("top", "labels"),
    [("2.5", ["$2.50", "$1.25"]), ("0.5", ["$0.50", "$0.25"]), ("0.05", ["$0.050", "$0.025"]),
     ("0.0099", ["$0.0099", "$0.0050"]), ("0.00001", ["$0.000010", "$0.000005"]),
     ("12345", ["$12345.00", "$6172.50"])],
)  # fmt: skip
def test_axis_decimals_follow_the_axis_maximum(top, labels):
    svg = charts.stacked_bars(["2026-01-01"], {"m": {"2026-01-01": Decimal(top)}})
    assert axis(svg, "y") == [*labels, "$0"]


def test_the_last_day_is_labelled(admin_client):
    key, _ = key_services.create_key(name="daily")
    spend(key, "1")
    page = admin_client.get("/dashboard/").content.decode()
    today = datetime.now(UTC).date()
    labels = axis(page, "x")
    assert labels[-1] == f"{today:%m-%d}"
    assert labels[0] != labels[-1] and len(labels) <= 8
    for count in range(1, 41):  # any number of days: the newest is labelled, at most 8 are
        days = [str(today - timedelta(days=n)) for n in range(count - 1, -1, -1)]
        drawn = axis(charts.stacked_bars(days, {}), "x")
        assert drawn[-1] == days[-1][5:] and 1 <= len(drawn) <= 8, count


def test_recent_errors_include_refusals_without_an_error_text(admin_client):
    key, _ = key_services.create_key(name="refused")
    spend(key, "0", status=429, n=1)
    spend(key, "0", status=413, n=2)
    spend(key, "0.5", status=200, n=3)  # a success: not an error
    spend(key, "0", status=502, error="upstream: ConnectError", n=4)
    page = admin_client.get("/dashboard/").content.decode()
    errors = page[page.index("Recent errors") :]
    assert "HTTP 429 Too Many Requests" in errors
    assert "HTTP 413 Request Entity Too Large" in errors or "HTTP 413 Content Too Large" in errors
    assert "upstream: ConnectError" in errors
    assert errors.count("<td>refused</td>") == 3
    assert errors.index("429") < errors.index("413") < errors.index("ConnectError")  # newest first


def test_spend_by_key_names_each_key(admin_client):
    first, _ = key_services.create_key(name="laptop")
    second, _ = key_services.create_key(name="laptop")  # same name: the prefix tells them apart
    spend(first, "1")
    spend(second, "2")
    page = admin_client.get("/dashboard/?by=key").content.decode()
    assert f"laptop ({first.prefix}…): $1.0000" in page
    assert f"laptop ({second.prefix}…): $2.0000" in page
    assert "<strong>by key</strong>" in page
    assert f"{first.pk}: $" not in page  # never only the id
    top_keys = page[page.index("Top keys") : page.index("Top models")]
    assert f"{first.prefix}…" in top_keys and f"{second.prefix}…" in top_keys


def test_the_favicon_is_answered_without_a_404(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 204 and response.content == b""
    assert "max-age" in response["Cache-Control"]
    assert client.head("/favicon.ico").status_code == 204
    assert client.post("/favicon.ico").status_code == 405
