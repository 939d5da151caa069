"""Admission: rate limits, concurrency and the budget check, embedded and on real Redis."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from accounts import services as key_services
from accounts.models import Team
from billing.reservations import to_units
from llmproxy.gateway import limits
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.policy import load_key_policy
from tests.usage import record_usage

pytestmark = pytest.mark.django_db(transaction=True)
# Spend recorded the way the gateway records it: the usage writer keeps the daily rollups
# the limiter's rebuild reads.
arecord_usage = sync_to_async(record_usage)


@pytest.fixture(params=["local", "redis"])
def limiter(request):
    if request.param == "local":
        return limits.LocalLimiter()
    client = request.getfixturevalue("redis_client")
    for name in client.scan_iter(f"{limits.PREFIX}*"):
        client.delete(name)
    return limits.RedisLimiter()


def policy_for(**fields):
    key, _ = key_services.create_key(name="limits", **fields)
    return load_key_policy(key.digest), key


async def refused(limiter, policy, now, estimate: int = 0) -> ProxyError:
    with pytest.raises(ProxyError) as raised:
        await limiter.admit(policy, estimate, now=now)
    return raised.value


async def test_requests_per_minute(limiter):
    policy, _ = await _policy(rpm=3)
    now = 1_800_000_000.0  # the start of a minute
    tickets = [await limiter.admit(policy, now=now + i) for i in range(3)]
    error = await refused(limiter, policy, now + 10)
    assert error.kind is ErrorKind.RATE_LIMIT and error.retry_after == 50
    for ticket in tickets:
        await limiter.settle(ticket, Decimal(0), 0)
    ticket = await limiter.admit(policy, now=now + 61)  # the next minute
    assert ticket.state.rpm_used == 1


async def test_max_concurrent_is_released_on_settle(limiter):
    policy, _ = await _policy(max_concurrent=2)
    now = time.time()
    first = await limiter.admit(policy, now=now)
    await limiter.admit(policy, now=now)
    error = await refused(limiter, policy, now)
    assert error.kind is ErrorKind.RATE_LIMIT and error.retry_after == 1
    await limiter.settle(first, Decimal(0), 0)
    await limiter.settle(first, Decimal(0), 0)  # settling twice releases once
    again = await limiter.admit(policy, now=now)  # would raise if the slot were still held
    assert not again.released
    await refused(limiter, policy, now)


async def test_a_slot_held_by_a_dead_worker_expires(limiter):
    policy, _ = await _policy(max_concurrent=1)
    now = time.time()
    await limiter.admit(policy, now=now)  # never settled
    await refused(limiter, policy, now + 10)
    later = await limiter.admit(policy, now=now + limits.HOLD_TTL + 1)  # raises if still held
    assert not later.released


async def test_tokens_per_minute_counts_settled_tokens(limiter):
    policy, _ = await _policy(tpm=1000)
    now = 1_800_000_000.0
    ticket = await limiter.admit(policy, now=now)
    await limiter.settle(ticket, Decimal(0), 999)
    ticket = await limiter.admit(policy, now=now + 1)
    await limiter.settle(ticket, Decimal(0), 1)
    error = await refused(limiter, policy, now + 2)
    assert error.kind is ErrorKind.RATE_LIMIT and "1000 tokens per minute" in error.message


async def test_budget_counts_recorded_spend_and_settled_cost(limiter):
    policy, key = await _policy(budget_usd=Decimal("1.00"), budget_period="day")
    now = time.time()
    # spend recorded before this worker started: the counter is rebuilt from the ledger
    await arecord_usage(
        request_id="old-1",
        api_key=key,
        model="m",
        endpoint="/v1/messages",
        cost_usd=Decimal("0.60"),
        created_at=timezone.now(),
    )
    ticket = await limiter.admit(policy, now=now)
    await limiter.settle(ticket, Decimal("0.40"), 10)
    error = await refused(limiter, policy, now)
    assert error.kind is ErrorKind.BILLING and error.kind.status == 402
    assert "$1.0000 per day" in error.message


async def test_team_budget_is_shared_by_its_keys(limiter):
    team = await Team.objects.acreate(name="t", budget_usd=Decimal("0.50"), budget_period="month")
    first, _ = await _policy(team=team)
    second, _ = await _policy(team=team)
    now = time.time()
    ticket = await limiter.admit(first, now=now)
    await limiter.settle(ticket, Decimal("0.50"), 1)
    error = await refused(limiter, second, now)
    assert error.kind is ErrorKind.BILLING and "team" in error.message


async def test_a_lost_spend_counter_is_rebuilt_before_admitting(redis_client):
    limiter = limits.RedisLimiter()
    policy, key = await _policy(budget_usd=Decimal("1.00"), budget_period="total")
    now = time.time()
    await limiter.settle(await limiter.admit(policy, now=now), Decimal(0), 0)
    await arecord_usage(
        request_id="spent-1",
        api_key=key,
        model="m",
        endpoint="/v1/messages",
        cost_usd=Decimal("1.00"),
        created_at=timezone.now(),
    )
    for name in redis_client.scan_iter(f"{limits.PREFIX}spend:*"):
        redis_client.delete(name)  # Redis lost the counter (restart, eviction)
    error = await refused(limiter, policy, now)
    assert error.kind is ErrorKind.BILLING


async def _policy(**fields):
    from asgiref.sync import sync_to_async

    return await sync_to_async(policy_for)(**fields)


async def test_reservations_stop_concurrent_requests_from_overshooting(limiter):
    policy, _ = await _policy(budget_usd=Decimal("1.00"), budget_period="day")
    now = time.time()
    forty_cents = to_units(Decimal("0.40"))
    first = await limiter.admit(policy, forty_cents, now=now)
    await limiter.admit(policy, forty_cents, now=now)
    # $0 spent, $0.80 reserved: a third request that could cost $0.40 would overshoot
    error = await refused(limiter, policy, now, forty_cents)
    assert error.kind is ErrorKind.BILLING and "reserved" in error.message
    assert error.headers["x-llmproxy-budget-remaining-usd"] == "0.20000000"
    # settling swaps the reservation for the actual cost
    await limiter.settle(first, Decimal("0.10"), 10)
    third = await limiter.admit(policy, forty_cents, now=now)
    assert third.state.budget_left_units == to_units(Decimal("0.10"))


async def test_a_reservation_held_by_a_dead_worker_expires(limiter):
    policy, _ = await _policy(budget_usd=Decimal("1.00"), budget_period="total")
    now = time.time()
    whole = to_units(Decimal("1.00"))
    await limiter.admit(policy, whole, now=now)  # never settled
    await refused(limiter, policy, now + 60, 1)
    later = await limiter.admit(policy, whole, now=now + limits.HOLD_TTL + 1)
    assert later.state.budget_left_units == 0  # the whole budget is this request's again


async def test_admission_reports_rate_limit_state(limiter):
    policy, _ = await _policy(rpm=10, tpm=5000, budget_usd=Decimal(2), budget_period="month")
    now = 1_800_000_010.0
    ticket = await limiter.admit(policy, to_units(Decimal("0.5")), now=now)
    headers = limits.state_headers(ticket, now)
    assert headers["x-llmproxy-ratelimit-limit-requests"] == "10"
    assert headers["x-llmproxy-ratelimit-remaining-requests"] == "9"
    assert headers["x-llmproxy-ratelimit-reset-requests"] == "50s"
    assert headers["x-llmproxy-ratelimit-remaining-tokens"] == "5000"
    assert headers["x-llmproxy-budget-remaining-usd"] == "1.50000000"
    assert headers["x-llmproxy-budget-period"] == "month"
