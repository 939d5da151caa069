"""The ledger at scale: the spend queries against millions of usage events.

    DATABASE_URL=postgresql://.../scratch python -m bench.ledger [--events 10000000] [--runs 5]

Fills the database named by DATABASE_URL (a scratch database: it is migrated, and
``generateusage`` adds events until it holds ``--events``), then times, ``--runs`` times each,
what must answer in under a second at 10 million rows (issue 13): the dashboard, the spend API
(by day, key, team and model), a budget rebuild (the limiter's ledger read) and the alert
check. Prints one line per query: median and worst of the runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal


def setup() -> None:
    if not os.environ.get("DATABASE_URL"):
        sys.exit("bench.ledger: set DATABASE_URL to a scratch database")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-secret-key-not-for-production")
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")
    os.environ.setdefault("LLMPROXY_ENV_FILE", "")
    import django

    django.setup()


def timed(runs: int, action: Callable[[], object]) -> tuple[float, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000, max(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    setup()

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from rest_framework.test import APIClient

    from accounts import services as key_services
    from billing import alerts, budgets
    from billing.models import UsageEvent
    from llmproxy.gateway import limits

    call_command("migrate", verbosity=0)
    have = UsageEvent.objects.count()
    if have < options.events:
        print(f"generating {options.events - have} usage events ...", flush=True)
        call_command("generateusage", events=options.events - have, days=90)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"{UsageEvent.objects.count()} usage events", flush=True)

    admin, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    browser = Client()
    browser.force_login(admin)
    api = APIClient()
    api.force_authenticate(admin)
    key = key_services.create_key(name="bench-budget", budget_usd=Decimal(100),
                                  budget_period="month")[0]  # fmt: skip
    budget = budgets.of_key(key)

    def get(client, path: str) -> Callable[[], None]:
        def call() -> None:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)

        return call

    spend = {
        f"spend API ?by={by}": get(api, f"/api/spend?by={by}")
        for by in ("day", "key", "team", "model")
    }
    cases = {
        "dashboard /dashboard/": get(browser, "/dashboard/"),
        **spend,
        "budget rebuild (month)": lambda: limits.spent_in_period(budget, time.time()),
        "alert check (every budget)": alerts.check_budget_alerts,
    }
    print(f"{'query':32} {'median ms':>10} {'worst ms':>10}")
    for name, action in cases.items():
        median, worst = timed(options.runs, action)
        print(f"{name:32} {median:10.1f} {worst:10.1f}", flush=True)


if __name__ == "__main__":
    main()
