from __future__ import annotations

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db


def test_healthz_reports_the_database_and_redis_when_configured(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    if settings.REDIS_URL:
        assert body["mode"] == "scaled" and body["checks"]["redis"]["status"] == "ok"
    else:
        assert body["mode"] == "embedded" and "redis" not in body["checks"]


def test_healthz_fails_loudly_when_redis_is_down(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    from llmproxy.gateway import hotstore

    hotstore.sync_redis.cache_clear()
    try:
        response = client.get("/healthz")
    finally:
        hotstore.sync_redis.cache_clear()
    assert response.status_code == 503
    assert response.json()["checks"]["redis"]["status"].startswith("error")
