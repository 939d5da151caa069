"""Probes: GET /healthz (liveness: the process answers) and GET /readyz (readiness: the
database and Redis answer, and the process is not draining for a shutdown)."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from llmproxy.core import draining
from llmproxy.gateway import hotstore


def _mode() -> str:
    return "scaled" if settings.REDIS_URL else "embedded"


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_redis() -> str:
    hotstore.sync_redis().ping()
    return "ok"


@require_GET
def healthz(request):
    """Liveness: answers while the process runs; restart it when this stops answering."""
    return JsonResponse({"status": "ok", "mode": _mode(), "draining": draining.is_draining()})


@require_GET
def readyz(request):
    """Readiness: send this process work only while this is 200."""
    checks = {"database": _check_database}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis
    report: dict[str, dict] = {}
    ready = not draining.is_draining()
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            status = check()
        except Exception as exc:  # any failure is the answer we report, not a 500
            status, ready = f"error: {type(exc).__name__}", False
        report[name] = {"status": status, "ms": round((time.perf_counter() - started) * 1000, 2)}
    report["draining"] = {"status": "draining" if draining.is_draining() else "ok"}
    return JsonResponse(
        {"status": "ok" if ready else "error", "mode": _mode(), "checks": report},
        status=200 if ready else 503,
    )
