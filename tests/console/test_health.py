"""Probes: /healthz answers while the process runs; /readyz checks the database, Redis and
whether the process is draining."""

from __future__ import annotations

import pytest
from django.conf import settings

from llmproxy.core import draining

pytestmark = pytest.mark.django_db


def test_healthz_is_liveness_only(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # a dependency down does not fail liveness
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_readyz_reports_the_database_and_redis_when_configured(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    if settings.REDIS_URL:
        assert body["mode"] == "scaled" and body["checks"]["redis"]["status"] == "ok"
    else:
        assert body["mode"] == "embedded" and "redis" not in body["checks"]


def test_readyz_fails_loudly_when_redis_is_down(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    from llmproxy.gateway import hotstore

    hotstore.sync_redis.cache_clear()
    try:
        response = client.get("/readyz")
    finally:
        hotstore.sync_redis.cache_clear()
    assert response.status_code == 503
    assert response.json()["checks"]["redis"]["status"].startswith("error")


def test_readyz_fails_while_draining(client):
    draining.start()
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["draining"]["status"] == "draining"
        assert client.get("/healthz").status_code == 200  # alive: it is finishing its work
    finally:
        draining.reset()
