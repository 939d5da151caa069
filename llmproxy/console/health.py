"""GET /healthz: is the database reachable, and Redis when configured."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from llmproxy.gateway import hotstore


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_redis() -> str:
    hotstore.sync_redis().ping()
    return "ok"


@require_GET
def healthz(request):
    checks = {"database": _check_database}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis
    report: dict[str, dict] = {}
    healthy = True
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            status = check()
        except Exception as exc:  # any failure is the answer we report, not a 500
            status, healthy = f"error: {type(exc).__name__}", False
        report[name] = {"status": status, "ms": round((time.perf_counter() - started) * 1000, 2)}
    mode = "scaled" if settings.REDIS_URL else "embedded"
    return JsonResponse(
        {"status": "ok" if healthy else "error", "mode": mode, "checks": report},
        status=200 if healthy else 503,
    )
