from __future__ import annotations

import os

import pytest
from django.conf import settings

pytest_plugins = ["tests.fixtures"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, what: str) -> None:
    """Skip locally when a server is not configured; under CI=true that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} not configured")


@pytest.fixture
def redis_client():
    require(bool(settings.REDIS_URL), "Redis (REDIS_URL)")
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        require(False, f"Redis at {settings.REDIS_URL} ({exc})")
    yield client
    client.close()


@pytest.fixture
def postgres(db):
    from django.db import connection

    require(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL)")
    return connection


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")


@pytest.fixture(scope="session", autouse=True)
def _close_proxy_db_connections(django_db_setup, django_db_blocker):
    """The proxy's DB threads hold connections; close them before the test DB is dropped.

    Also clear llmproxy's keys from the test Redis (REDIS_URL must name a scratch database):
    the test database is new every session, so key ids repeat, and counters left by an
    earlier session would belong to the wrong keys.
    """
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for name in client.scan_iter("llmproxy:*"):
            client.delete(name)
    yield
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    from llmproxy import dbthreads
    from llmproxy.usage_sink import sink

    with django_db_blocker.unblock():
        dbthreads.close_all()
        sink.close_connections()
        # async tests' ORM calls ran in asgiref's shared sync thread: close its connection too
        asyncio.run(sync_to_async(connections.close_all)())
