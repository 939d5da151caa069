"""The budget promise under load: however many requests arrive at once, no overshoot.

Runs against whichever store the settings select: in CI that is the real Redis (Lua
admission); locally without REDIS_URL, the in-process twin.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import orjson
import pytest

from accounts import services as key_services
from accounts.models import Team
from billing.models import UsageEvent
from billing.reservations import to_units
from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu
from tests.usage import record_usage

pytestmark = pytest.mark.e2e

MAX_TOKENS = 1000
BODY = orjson.dumps(
    {"model": MODEL, "max_tokens": MAX_TOKENS, "stream": True,
     "messages": [{"role": "user", "content": "spend a little"}]}
)  # fmt: skip
PROMPT = len(BODY) // 3  # the gateway's prompt estimate for this body
# Worst case at the test price: prompt at the 1-hour cache write rate ($6), output at $15.
RESERVATION = (Decimal(PROMPT * 6) + Decimal(MAX_TOKENS * 15)) / Decimal(1_000_000)


def full_cost_reply(delay: float = 0.02):
    """An answer that costs exactly the reservation, streamed slowly to overlap requests."""
    return fu.text("ok", input_tokens=0, cache_write_1h=PROMPT, output_tokens=MAX_TOKENS,
                   chunks=5, delay=delay)  # fmt: skip


async def fire(gateway, secrets: list[str], count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one(index: int) -> httpx.Response:
            headers = {
                "x-api-key": secrets[index % len(secrets)],
                "content-type": "application/json",
            }
            return await http.post(gateway.url + "/v1/messages", content=BODY, headers=headers)

        return await asyncio.gather(*(one(i) for i in range(count)))


def check(responses: list[httpx.Response], budget: Decimal, recorded) -> int:
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    for response in refused:
        assert response.status_code == 402, response.text
        assert response.json()["error"]["type"] == "billing_error"
        assert response.headers["x-should-retry"] == "false"
    for response in admitted:
        assert response.text.rstrip().endswith('data: {"type":"message_stop"}')
    events = recorded(len(admitted))
    spent = sum((e.cost_usd for e in events), Decimal(0))
    assert spent <= budget
    return len(admitted)


def test_200_concurrent_requests_against_a_key_that_pays_for_10(gateway, fake, make_key, recorded):
    fake.set_default(full_cost_reply())
    budget = RESERVATION * 10
    secret = make_key(budget_usd=budget, budget_period="day")
    responses = asyncio.run(fire(gateway, [secret], 200))
    admitted = check(responses, budget, recorded)
    # Each call costs exactly its reservation, so the budget pays for exactly ten: the first
    # ten to arrive hold it all, and settling frees nothing for the others.
    assert admitted == 10
    late = asyncio.run(fire(gateway, [secret], 5))
    assert {r.status_code for r in late} == {402}


def test_a_team_budget_shared_by_several_keys(gateway, fake, make_key, recorded):
    fake.set_default(full_cost_reply())
    budget = RESERVATION * 10
    team = Team.objects.create(name="shared", budget_usd=budget, budget_period="month")
    secrets = [make_key(name=f"member {i}", team=team) for i in range(4)]
    responses = asyncio.run(fire(gateway, secrets, 200))
    assert check(responses, budget, recorded) == 10  # each costs exactly its reservation
    assert {e.team_id for e in UsageEvent.objects.all()} == {team.pk}


# Codex's protocol: the same promise, refusals as OpenAI's 429 insufficient_quota.
RESPONSES_BODY = orjson.dumps(
    {"model": OPENAI_MODEL, "max_output_tokens": MAX_TOKENS, "stream": True,
     "input": [{"role": "user", "content": "spend a little"}]}
)  # fmt: skip
RESPONSES_PROMPT = len(RESPONSES_BODY) // 3
# Worst case at the gpt-test price: prompt at $1.25 (no cache-write rate), output at $10.
RESPONSES_RESERVATION = (
    Decimal(RESPONSES_PROMPT) * Decimal("1.25") + Decimal(MAX_TOKENS * 10)
) / Decimal(1_000_000)


async def fire_responses(gateway, secret: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        return await asyncio.gather(
            *(
                http.post(gateway.url + "/v1/responses", content=RESPONSES_BODY, headers=headers)
                for _ in range(count)
            )
        )


def test_200_concurrent_codex_requests_against_a_key_that_pays_for_10(
    gateway, fake, make_openai_key, recorded
):
    fake.set_default(
        fo.response("ok", input_tokens=RESPONSES_PROMPT, output_tokens=MAX_TOKENS, chunks=5,
                    delay=0.02)
    )  # fmt: skip
    budget = RESPONSES_RESERVATION * 10
    secret = make_openai_key(budget_usd=budget, budget_period="day")
    responses = asyncio.run(fire_responses(gateway, secret, 200))
    admitted = [r for r in responses if r.status_code == 200]
    for response in responses:
        if response.status_code != 200:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "insufficient_quota"
            assert response.headers["x-should-retry"] == "false"
    assert len(admitted) == 10  # each call costs exactly its reservation (see above)
    for response in admitted:
        assert "event: response.completed" in response.text
    spent = sum((e.cost_usd for e in recorded(len(admitted))), Decimal(0))
    assert spent == budget


def test_a_slow_upstream_holds_its_reservations_while_others_arrive(
    gateway, fake, make_key, recorded
):
    """Two slow requests hold the whole budget; requests arriving meanwhile are refused."""
    budget = RESERVATION * 2
    secret = make_key(budget_usd=budget, budget_period="day")
    fake.enqueue(full_cost_reply(delay=0.3), full_cost_reply(delay=0.3))

    async def scenario():
        slow = [asyncio.ensure_future(fire(gateway, [secret], 1)) for _ in range(2)]
        await asyncio.sleep(0.5)  # both are in flight, holding their reservations
        meanwhile = await fire(gateway, [secret], 20)
        finished = [response for batch in await asyncio.gather(*slow) for response in batch]
        return finished, meanwhile

    finished, meanwhile = asyncio.run(scenario())
    assert [r.status_code for r in finished] == [200, 200]
    assert {r.status_code for r in meanwhile} == {402}
    assert len(fake.requests) == 2
    check(finished, budget, recorded)


def test_a_lost_counter_is_rebuilt_from_the_ledger_never_admitting_blind(
    gateway, fake, make_key, recorded, settings
):
    fake.set_default(full_cost_reply(delay=0))
    budget = RESERVATION * 10
    secret = make_key(budget_usd=budget, budget_period="total")
    first = asyncio.run(fire(gateway, [secret], 6))
    assert [r.status_code for r in first] == [200] * 6
    recorded(6)
    lose_counters(settings)  # Redis flushed (or restarted empty) mid-run
    rest = asyncio.run(fire(gateway, [secret], 30))
    admitted = 6 + sum(r.status_code == 200 for r in rest)
    assert admitted == 10
    assert sum((e.cost_usd for e in recorded(10)), Decimal(0)) == budget


def lose_counters(settings) -> None:
    from llmproxy.gateway import limits

    if settings.REDIS_URL:
        from llmproxy.gateway import hotstore

        client = hotstore.sync_redis()
        for name in client.scan_iter(f"{limits.PREFIX}*"):
            client.delete(name)
    else:
        limits._local.forget_spend()


def test_a_new_period_starts_from_zero(make_key, transactional_db):
    """Period roll-over, with the clock set by the test."""
    from datetime import UTC, datetime

    from llmproxy.gateway import limits
    from llmproxy.gateway.errors import ProxyError
    from llmproxy.gateway.policy import load_key_policy

    key, _ = key_services.create_key(name="daily", budget_usd=Decimal(1), budget_period="day")
    late_on_day_one = datetime(2026, 11, 22, 23, 59, 50, tzinfo=UTC)
    record_usage(
        request_id="day-one", api_key=key, model=MODEL, endpoint="/v1/messages",
        cost_usd=Decimal(1), created_at=late_on_day_one,
    )  # fmt: skip
    policy = load_key_policy(key.digest)
    limiter = limits.LocalLimiter()

    async def admit(moment: datetime):
        return await limiter.admit(policy, 1, now=moment.timestamp())

    with pytest.raises(ProxyError):
        asyncio.run(admit(late_on_day_one))
    next_day = datetime(2026, 11, 23, 0, 0, 5, tzinfo=UTC)
    assert asyncio.run(admit(next_day)).state.budget_left_units == to_units(Decimal(1)) - 1
