"""A person in headless Chromium: log in, make a key, see its secret once, read the dashboard.

Screenshots land in test-artifacts/ (kept by CI as artifacts).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from accounts import services as key_services
from accounts.models import ApiKey
from tests.usage import record_usage

pytestmark = [pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an event loop running in this thread; the ORM calls the
    # test makes between page actions are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("/usr/bin/chromium is missing (Debian package chromium)")
        pytest.skip("/usr/bin/chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield chromium
        chromium.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_log_in_create_a_key_and_read_the_dashboard(gateway, browser, django_user_model):
    django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    page = browser.new_page()
    missing = []  # every 404 the pages met (Playwright does not report favicon fetches)
    page.on("response", lambda response: response.status == 404 and missing.append(response.url))
    page.goto(gateway.url + "/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw-admin-123")
    page.click("input[type=submit]")
    page.wait_for_selector("#dashboard-link")
    shot(page, "1-admin")

    page.goto(gateway.url + "/admin/accounts/apikey/add/")
    page.fill("#id_name", "browser key")
    page.fill("#id_budget_usd", "20")
    page.click("input[name=_save]")
    secret = page.input_value("#new-key-secret")
    assert re.fullmatch(r"llmp-[\w-]{40,}", secret)
    shot(page, "2-secret-once")
    key = ApiKey.objects.get(name="browser key")
    assert key_services.find_key(secret).pk == key.pk

    page.goto(gateway.url + f"/admin/accounts/apikey/{key.pk}/change/")
    assert secret not in page.content()
    assert key.prefix in page.content()

    for index, model in enumerate(["claude-opus-4-8", "gpt-5.5", "claude-haiku-4-5"]):
        record_usage(
            request_id=f"browser-{index}", api_key=key, model=model, endpoint="/v1/messages",
            cost_usd=Decimal("1.5") * (index + 1), input_tokens=1000, output_tokens=100,
            created_at=datetime.now(UTC),
        )  # fmt: skip
    page.goto(gateway.url + "/admin/")
    page.click("#dashboard-link")
    assert page.locator("svg.chart rect").count() >= 3
    assert page.locator("text=browser key").count() >= 1
    shot(page, "3-dashboard")

    page.goto(gateway.url + f"/dashboard/keys/{key.pk}/")
    assert "ANTHROPIC_BASE_URL" in page.content() and "model_providers.llmproxy" in page.content()
    assert page.locator("#usage tbody tr").count() == 3
    assert secret not in page.content()
    shot(page, "4-key-page")
    page.wait_for_load_state("networkidle")
    assert missing == []
    # Through the ASGI router, as a browser's own favicon fetch goes: no 404.
    assert page.request.get(gateway.url + "/favicon.ico").status == 204
