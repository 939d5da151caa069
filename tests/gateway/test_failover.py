"""Several providers per route: failover before the first byte, never after; a circuit
breaker for a provider that keeps failing; sessions that stay on one provider; overload
retries within a time budget; routes for some teams or people only."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from accounts import services as key_services
from accounts.models import Team
from billing.models import Price
from llmproxy.gateway import failover
from llmproxy.gateway import services as provider_services
from llmproxy.gateway.models import ModelRoute
from tests.fakes import MODEL, UPSTREAM_CREDENTIAL
from tests.fakes import fake_provider as fu
from tests.fakes.bad_upstream import BadUpstream
from tests.fakes.fake_provider import FakeProviderThread

pytestmark = pytest.mark.e2e

BODY = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "x"}]}


@pytest.fixture
def second():
    with FakeProviderThread() as server:
        yield server.fake


@pytest.fixture
def two_routes(provider, second):
    """The fixture's provider first (priority 10), a second one behind it (priority 20)."""
    backup, _ = provider_services.upsert_provider(
        name="backup-anthropic", kind="anthropic", base_url=second.url,
        credential=UPSTREAM_CREDENTIAL,
    )  # fmt: skip
    ModelRoute.objects.create(pattern="claude-test-*", provider=provider, priority=10)
    ModelRoute.objects.create(pattern="claude-test-*", provider=backup, priority=20)
    return provider, backup


def call(gateway, secret: str, stream: bool = False, **headers) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/messages", json={**BODY, "stream": stream},
        headers={"x-api-key": secret, **headers}, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize("failure", ["refused", "529", "500", "503"])
def test_a_failure_before_the_first_byte_is_served_by_the_next_provider(
    gateway, fake, second, two_routes, make_key, recorded, failure
):
    first, _ = two_routes
    if failure == "refused":
        dead = BadUpstream()
        dead.close()  # nothing listens there
        first.base_url = dead.url
        first.save()
    else:
        fake.enqueue(fu.error(int(failure), "overloaded_error", "try elsewhere"))
    second.enqueue(fu.text("from the backup", input_tokens=30, output_tokens=4))
    answer = call(gateway, make_key(budget_usd=Decimal(5)))
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"] == "from the backup"
    (event,) = recorded(1)  # one call, one record, one charge
    assert event.attempts == 2 and event.provider_id == two_routes[1].pk
    assert (event.input_tokens, event.output_tokens) == (30, 4)
    assert event.cost_usd == (30 * 3 + 4 * 15) / Decimal(10**6)


def test_after_the_first_byte_nothing_is_retried(
    gateway, fake, second, two_routes, make_key, recorded
):
    fake.enqueue(fu.drop_after(events=3))
    answer = call(gateway, make_key(), stream=True)
    assert answer.status_code == 200
    assert "event: error" in answer.text  # the protocol's error event, no second attempt
    assert second.requests == []
    (event,) = recorded(1)
    assert event.attempts == 1 and event.partial


def test_a_client_error_is_not_failed_over(gateway, fake, second, two_routes, make_key):
    fake.enqueue(fu.error(400, "invalid_request_error", "bad request"))
    answer = call(gateway, make_key())
    assert answer.status_code == 400 and "bad request" in answer.text
    assert second.requests == []


def test_the_circuit_breaker_skips_a_dead_provider_and_comes_back(
    gateway, fake, second, two_routes, make_key, settings
):
    settings.LLMPROXY_BREAKER_FAILURES = 2
    settings.LLMPROXY_BREAKER_SECONDS = 0.5
    first, _ = two_routes
    secret = make_key()
    fake.set_default(fu.error(500, "api_error", "down"))
    second.set_default(fu.text("backup"))
    for _ in range(2):
        assert call(gateway, secret).status_code == 200  # each tried the first, then the backup
    assert len(fake.requests) == 2 and failover.breaker.is_open(first.pk)
    assert call(gateway, secret).status_code == 200
    assert len(fake.requests) == 2  # skipped while open
    fake.set_default(fu.text("primary again"))
    time.sleep(0.6)
    answer = call(gateway, secret)
    assert answer.json()["content"][0]["text"] == "primary again"  # the half-open probe
    assert not failover.breaker.is_open(first.pk)


def test_a_session_stays_on_one_provider_and_weights_spread_sessions(
    gateway, fake, second, provider, make_key
):
    backup, _ = provider_services.upsert_provider(
        name="backup-anthropic", kind="anthropic", base_url=second.url,
        credential=UPSTREAM_CREDENTIAL,
    )  # fmt: skip
    ModelRoute.objects.create(pattern="claude-test-*", provider=provider, priority=10, weight=1)
    ModelRoute.objects.create(pattern="claude-test-*", provider=backup, priority=10, weight=3)
    secret = make_key()
    fake.set_default(fu.text("a"))
    second.set_default(fu.text("b"))
    served = {}
    for session in range(40):
        texts = {
            call(gateway, secret, **{"x-claude-code-session-id": f"s{session}"}).json()["content"][
                0
            ]["text"]
            for _ in range(3)
        }
        assert len(texts) == 1  # every turn of a session went to the same provider
        served[session] = texts.pop()
    share = sum(text == "b" for text in served.values()) / len(served)
    assert 0.55 <= share <= 0.95  # weight 3 of 4, across sessions


def test_overload_is_retried_with_backoff_within_the_budget(
    gateway, fake, provider, make_key, recorded, settings
):
    settings.LLMPROXY_RETRY_SECONDS = 5
    fake.enqueue(
        fu.error(529, "overloaded_error", "busy", headers={"retry-after": "0"}),
        fu.error(529, "overloaded_error", "busy"),
        fu.text("at last", input_tokens=5, output_tokens=1),
    )
    started = time.monotonic()
    answer = call(gateway, make_key())
    assert answer.status_code == 200 and answer.json()["content"][0]["text"] == "at last"
    assert time.monotonic() - started < 5
    (event,) = recorded(1)
    assert event.attempts == 3


def test_a_long_retry_after_is_passed_on_not_waited_for(
    gateway, fake, provider, make_key, recorded, settings
):
    settings.LLMPROXY_RETRY_SECONDS = 30
    fake.enqueue(fu.error(429, "rate_limit_error", "slow down", headers={"retry-after": "120"}))
    started = time.monotonic()
    answer = call(gateway, make_key())
    assert answer.status_code == 429 and answer.headers["retry-after"] == "120"
    assert time.monotonic() - started < 2
    assert len(fake.requests) == 1


def test_a_route_for_one_team_and_a_per_provider_price(
    gateway, fake, second, provider, make_key, recorded
):
    """One team's calls go to its own provider (say an EU region), priced at that
    provider's own rate; everyone else's to the default provider."""
    eu, _ = provider_services.upsert_provider(
        name="eu-anthropic", kind="anthropic", base_url=second.url,
        credential=UPSTREAM_CREDENTIAL,
    )  # fmt: skip
    team = Team.objects.create(name="eu")
    route = ModelRoute.objects.create(pattern="claude-test-*", provider=eu, priority=1)
    route.teams.add(team)
    ModelRoute.objects.create(pattern="claude-test-*", provider=provider, priority=50)
    Price.objects.create(
        model_pattern="claude-test-*", provider=eu, provider_kind="anthropic",
        input_per_mtok=Decimal(6), output_per_mtok=Decimal(30),
    )  # fmt: skip
    fake.set_default(fu.text("default", input_tokens=10, output_tokens=1))
    second.set_default(fu.text("eu", input_tokens=10, output_tokens=1))
    _, member = key_services.create_key(name="eu key", team=team)
    outsider = make_key()
    assert call(gateway, member).json()["content"][0]["text"] == "eu"
    assert call(gateway, outsider).json()["content"][0]["text"] == "default"
    eu_event, default_event = recorded(2)
    assert eu_event.cost_usd == (10 * 6 + 30) / Decimal(10**6)
    assert default_event.cost_usd == (10 * 3 + 15) / Decimal(10**6)
