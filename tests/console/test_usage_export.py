"""The usage CSV export and the usage filters, through the real ASGI server and PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from accounts import services as key_services
from billing.models import UsageEvent

pytestmark = pytest.mark.e2e


@pytest.fixture
def staff_token(django_user_model):
    staff = django_user_model.objects.create_superuser("exporter", "exporter@example.com", None)
    return key_services.create_api_token(user=staff, name="export")[1]


def test_the_csv_export_streams_every_row_newest_first(gateway, staff_token):
    key, _ = key_services.create_key(name="busy")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    # More rows than one page of the export, with ties on created_at across a page boundary.
    UsageEvent.objects.bulk_create(
        UsageEvent(
            request_id=f"req-{index:05d}", api_key=key, model="claude-x", client="claude-code",
            endpoint="/v1/messages", cost_usd=Decimal("0.001"),
            created_at=start + timedelta(seconds=index // 3),
        )
        for index in range(4501)
    )  # fmt: skip
    response = httpx.get(
        f"{gateway.url}/api/usage/?export=csv",
        headers={"Authorization": f"Bearer {staff_token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = list(
        UsageEvent.objects.order_by("-created_at", "-id").values_list("request_id", flat=True)
    )
    assert [row["request_id"] for row in rows] == expected
    assert len(rows) == 4501 and rows[0]["api_key"] == str(key.pk)


@pytest.mark.parametrize(
    "query",
    [
        "key=99999999999999999999999",  # beyond a bigint
        "key=%C2%B2",  # a digit to str.isdigit, not to int()
        "team=-1",
        "model=claude%00",  # PostgreSQL text cannot hold NUL
        "since=9999-12-31T23:59:59-23:59",  # past year 9999 once in UTC
        "until=2026-02-30",
        "since=yesterday",
    ],
)
@pytest.mark.parametrize("path", ["/api/usage/?export=csv&", "/api/usage/?", "/api/spend?"])
def test_bad_usage_filters_are_400s_before_anything_streams(gateway, staff_token, path, query):
    response = httpx.get(
        f"{gateway.url}{path}{query}", headers={"Authorization": f"Bearer {staff_token}"}
    )
    assert response.status_code == 400, response.text
    field = query.split("=")[0]
    assert field in response.json()
