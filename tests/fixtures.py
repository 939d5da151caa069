"""Fixtures: a real gateway on a loopback port in front of the fake provider, and data."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from accounts import services as key_services
from billing.models import Price
from llmproxy import services as provider_services
from llmproxy.testing.fake_provider import FakeProviderThread
from llmproxy.usage_sink import sink
from tests.servers import CountingApp, ServerThread

UPSTREAM_CREDENTIAL = "sk-upstream-test-credential-0123456789"
MODEL = "claude-test-4-5"


@pytest.fixture(scope="session")
def fake_server():
    with FakeProviderThread() as server:
        yield server


@pytest.fixture
def fake(fake_server):
    upstream = fake_server.fake
    upstream.clear()
    upstream.set_default(None)
    yield upstream
    upstream.clear()


@pytest.fixture(scope="session")
def gateway_server():
    from llmproxy.asgi import application

    app = CountingApp(application)
    with ServerThread(app) as server:
        server.app = app
        yield server


@pytest.fixture
def gateway(gateway_server, transactional_db):
    gateway_server.app.requests.clear()
    yield gateway_server
    # Write this test's usage while its database is still there, not into the next test's.
    assert sink.flush(timeout=20), "usage events were not handed over in time"


@pytest.fixture
def provider(fake, transactional_db):
    upstream, _ = provider_services.upsert_provider(
        name="fake-anthropic", kind="anthropic", base_url=fake.url, credential=UPSTREAM_CREDENTIAL
    )
    Price.objects.create(
        model_pattern="claude-test-*",
        provider_kind="anthropic",
        input_per_mtok=Decimal(3),
        output_per_mtok=Decimal(15),
        cache_write_5m_per_mtok=Decimal("3.75"),
        cache_write_1h_per_mtok=Decimal(6),
        cache_read_per_mtok=Decimal("0.30"),
        tool_prices={"web_search": "0.01"},
        default_max_output_tokens=64000,
    )
    return upstream


@pytest.fixture
def make_key(provider):
    def make(**policy) -> str:
        _, secret = key_services.create_key(name=policy.pop("name", "test key"), **policy)
        return secret

    return make


@pytest.fixture
def recorded():
    """The usage events, once every queued one has been written."""
    from billing.models import UsageEvent

    def read(expected: int | None = None) -> list[UsageEvent]:
        # The gateway settles after the client saw the end of the answer: wait for it.
        deadline = time.monotonic() + 10
        while True:
            assert sink.flush(timeout=20), "usage events were not handed over in time"
            events = list(UsageEvent.objects.order_by("created_at", "id"))
            if expected is None or len(events) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if expected is not None:
            assert len(events) == expected, [(e.status, e.error) for e in events]
        return events

    return read


OPENAI_CREDENTIAL = "sk-openai-upstream-test-credential-9876"
OPENAI_MODEL = "gpt-test-5"


@pytest.fixture
def openai_provider(fake, transactional_db):
    upstream, _ = provider_services.upsert_provider(
        name="fake-openai", kind="openai", base_url=fake.url, credential=OPENAI_CREDENTIAL
    )
    Price.objects.create(
        model_pattern="gpt-test-*",
        provider_kind="openai",
        input_per_mtok=Decimal("1.25"),
        output_per_mtok=Decimal(10),
        cache_read_per_mtok=Decimal("0.125"),
        tool_prices={"web_search": "0.01"},
        container_prices={"1g": "0.03", "4g": "0.12"},
        default_max_output_tokens=128000,
    )
    return upstream


@pytest.fixture
def make_openai_key(openai_provider):
    def make(**policy) -> str:
        _, secret = key_services.create_key(name=policy.pop("name", "codex key"), **policy)
        return secret

    return make
