"""Every shared fixture: real servers on loopback (the fake provider, a gateway), data, the
permission cast, and the services the scaled mode needs."""

import os
import time
from decimal import Decimal

import pytest
from django.conf import settings

from accounts import services as key_services
from billing.models import Price
from llmproxy.gateway import services as provider_services
from llmproxy.gateway.usage_sink import sink as usage_sink
from tests.fakes import OPENAI_CREDENTIAL, UPSTREAM_CREDENTIAL
from tests.fakes import fake_azure as fa
from tests.fakes import fake_bedrock as fb
from tests.fakes import fake_vertex as fv
from tests.fakes.fake_provider import FakeProviderThread
from tests.servers import CountingApp, ServerThread

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

    from llmproxy.gateway import dbthreads

    with django_db_blocker.unblock():
        dbthreads.close_all()
        usage_sink.close_connections()
        # async tests' ORM calls ran in asgiref's shared sync thread: close its connection too
        asyncio.run(sync_to_async(connections.close_all)())


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
    assert usage_sink.flush(timeout=20), "usage events were not handed over in time"


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
            assert usage_sink.flush(timeout=20), "usage events were not handed over in time"
            events = list(UsageEvent.objects.order_by("created_at", "id"))
            if expected is None or len(events) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if expected is not None:
            assert len(events) == expected, [(e.status, e.error) for e in events]
        return events

    return read


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


@pytest.fixture
def sink():
    """An HTTP proxy that refuses every connection: where the CLIs' own outside calls go."""
    from tests.e2e.clients import ProxySink

    with ProxySink() as proxy_sink:
        yield proxy_sink


@pytest.fixture(autouse=True)
def _fresh_circuit_breakers():
    """Provider ids repeat across tests: no breaker state may carry over from one to the next."""
    from llmproxy.gateway import failover

    failover.breaker.reset()
    yield
    failover.breaker.reset()


# --- the clouds' fakes (tests/fakes/fake_bedrock.py, fake_vertex.py, fake_azure.py) ----------


@pytest.fixture(scope="session")
def bedrock_server():
    with FakeProviderThread(fb.FakeBedrock) as server:
        yield server


@pytest.fixture
def bedrock(bedrock_server):
    fake = bedrock_server.fake
    fake.clear()
    fake.set_default(None)
    yield fake
    fake.clear()


@pytest.fixture
def add_bedrock(bedrock, transactional_db):
    """A Bedrock-kind provider on the fake, serving claude-test-* as its own model id."""
    from llmproxy.gateway.models import ModelRoute

    def add(credential: str = fb.CREDENTIAL, **options):
        provider, _ = provider_services.upsert_provider(
            name="bedrock-us", kind="bedrock", base_url=bedrock.url, credential=credential,
            options={"region": fb.REGION, **options},
        )  # fmt: skip
        ModelRoute.objects.create(
            pattern="claude-test-*", provider=provider, upstream_model=fb.MODEL_ID
        )
        return provider

    return add


@pytest.fixture
def bedrock_provider(add_bedrock):
    provider = add_bedrock()
    # Bedrock's own price for the model (cloud prices can differ from the kind's row)
    Price.objects.create(
        model_pattern="claude-test-*", provider_kind="anthropic", provider=provider,
        input_per_mtok=Decimal(4), output_per_mtok=Decimal(20),
        cache_read_per_mtok=Decimal("0.4"), cache_write_5m_per_mtok=Decimal(5),
    )  # fmt: skip
    return provider


@pytest.fixture(scope="session")
def vertex_server():
    with FakeProviderThread(fv.FakeVertex) as server:
        yield server


@pytest.fixture
def vertex(vertex_server):
    fake = vertex_server.fake
    fake.clear()
    fake.set_default(None)
    yield fake
    fake.clear()


@pytest.fixture
def add_vertex(vertex, transactional_db):
    """A Vertex-kind provider on the fake with a service account its token endpoint knows."""
    from llmproxy.gateway.kinds import kind_of
    from llmproxy.gateway.models import ModelRoute

    kind_of("vertex").tokens.clear()  # no token of an earlier test's account or fake

    def add(credential: str | None = None, name: str = "vertex-us", **options):
        provider, _ = provider_services.upsert_provider(
            name=name, kind="vertex", base_url=vertex.url,
            credential=credential or vertex.new_account(), options={"region": fv.REGION, **options},
        )  # fmt: skip
        ModelRoute.objects.create(
            pattern="claude-test-*", provider=provider, upstream_model=fv.MODEL_ID
        )
        return provider

    yield add
    kind_of("vertex").tokens.clear()


@pytest.fixture
def vertex_provider(add_vertex):
    provider = add_vertex()
    Price.objects.create(
        model_pattern="claude-test-*", provider_kind="anthropic", provider=provider,
        input_per_mtok=Decimal("3.3"), output_per_mtok=Decimal("16.5"),
        cache_read_per_mtok=Decimal("0.33"),
    )  # fmt: skip
    return provider


@pytest.fixture(scope="session")
def azure_server():
    with FakeProviderThread(fa.FakeAzure) as server:
        yield server


@pytest.fixture
def azure(azure_server):
    fake = azure_server.fake
    fake.clear()
    fake.set_default(None)
    yield fake
    fake.clear()


@pytest.fixture
def add_azure(azure, transactional_db):
    """An Azure-kind provider on the fake; ``pattern`` routes to its deployment."""
    from llmproxy.gateway.kinds import kind_of
    from llmproxy.gateway.models import ModelRoute

    kind_of("azure").tokens.clear()

    def add(credential: str = fa.API_KEY, pattern: str = "gpt-test-*", **options):
        provider, _ = provider_services.upsert_provider(
            name="azure-eu", kind="azure", base_url=azure.url, credential=credential,
            options=options,
        )  # fmt: skip
        ModelRoute.objects.create(pattern=pattern, provider=provider, upstream_model=fa.DEPLOYMENT)
        return provider

    yield add
    kind_of("azure").tokens.clear()


@pytest.fixture
def azure_provider(add_azure):
    provider = add_azure()
    Price.objects.create(
        model_pattern="gpt-test-*", provider_kind="openai", provider=provider,
        input_per_mtok=Decimal(2), output_per_mtok=Decimal(12), cache_read_per_mtok=Decimal("0.2"),
    )  # fmt: skip
    return provider
