"""The staff dashboard: charts drawn on the server, a page per key with client setup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts import services as key_services
from accounts.models import Team
from billing.models import UsageEvent

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
        UsageEvent.objects.create(
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
