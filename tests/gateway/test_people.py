"""People: policies and budgets on the person and the team, besides the key; sign-in tokens
are a person's credentials too. Every layer must allow a call, in one atomic admission."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model

from accounts import services as key_services
from accounts import signin
from accounts.models import Person, Team
from billing.models import UsageEvent
from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu
from tests.gateway.test_budget_proof import (
    BODY,
    MAX_TOKENS,
    RESERVATION,
    RESPONSES_BODY,
    RESPONSES_PROMPT,
    RESPONSES_RESERVATION,
    full_cost_reply,
)

pytestmark = pytest.mark.e2e

MESSAGE = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def alice_person(transactional_db):
    user = get_user_model().objects.create_user("alice", "alice@example.com")
    return Person.objects.create(user=user)


def call(gateway, credential: str, body: dict = MESSAGE) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/messages", json=body, headers={"authorization": f"Bearer {credential}"}
    )


def test_a_sign_in_token_works_like_a_key_and_its_usage_is_the_persons(
    gateway, fake, provider, alice_person, recorded
):
    fake.set_default(fu.text("ok", input_tokens=10, output_tokens=2))
    issued = signin.issue(person=alice_person.user, client="claude_code")
    assert call(gateway, issued.access_token).status_code == 200
    (event,) = recorded(1)
    assert event.person_id == alice_person.pk and event.api_key_id is None
    assert event.credential == "claude_code"
    # The refresh token is not a credential for the proxy.
    refused = call(gateway, issued.refresh_token)
    assert refused.status_code == 401


def test_refresh_rotates_and_a_replayed_refresh_token_ends_the_sign_in(
    gateway, fake, provider, alice_person
):
    fake.set_default(fu.text("ok"))
    first = signin.issue(person=alice_person.user, client="claude_code")
    second = signin.refresh(secret=first.refresh_token)
    assert call(gateway, second.access_token).status_code == 200
    assert call(gateway, first.access_token).status_code == 401  # replaced at the refresh
    with pytest.raises(signin.SignInError) as replay:
        signin.refresh(secret=first.refresh_token)  # stolen and replayed
    assert replay.value.code == "invalid_grant"
    time.sleep(0.6)  # one policy refresh period
    assert call(gateway, second.access_token).status_code == 401  # the family is revoked
    with pytest.raises(signin.SignInError):
        signin.refresh(secret=second.refresh_token)


def test_a_disabled_person_is_cut_off_within_a_second(gateway, fake, provider, alice_person):
    fake.set_default(fu.text("ok"))
    issued = signin.issue(person=alice_person.user, client="cli")
    _, key = key_services.create_key(name="alice key", owner=alice_person.user)
    assert call(gateway, issued.access_token).status_code == 200
    assert call(gateway, key).status_code == 200
    alice_person.user.is_active = False
    alice_person.user.save()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if {call(gateway, s).status_code for s in (issued.access_token, key)} == {401}:
            break
        time.sleep(0.05)
    assert call(gateway, issued.access_token).status_code == 401
    assert call(gateway, key).status_code == 401
    with pytest.raises(signin.SignInError) as refused:
        signin.refresh(secret=issued.refresh_token)
    assert refused.value.code == "invalid_grant"


def test_person_and_team_policies_apply_to_every_key_and_sign_in(
    gateway, fake, provider, alice_person
):
    fake.set_default(fu.text("ok"))
    team = Team.objects.create(name="eng", allowed_models=["claude-*"], rpm=100)
    alice_person.default_team = team
    alice_person.allowed_models = ["claude-test-*"]
    alice_person.save()
    _, key = key_services.create_key(name="k", owner=alice_person.user)
    token = signin.issue(person=alice_person.user, client="cli").access_token
    for credential in (key, token):
        assert call(gateway, credential).status_code == 200
        other = call(gateway, credential, {**MESSAGE, "model": "claude-opus-4-8"})
        assert other.status_code == 403 and "may not use the model" in other.text
    # The team's limit counts calls from every credential of every member.
    team.rpm = 4
    team.save()
    time.sleep(0.6)
    statuses = [call(gateway, credential).status_code for credential in (key, token, key, token)]
    assert statuses.count(200) <= 4 and call(gateway, key).status_code == 429
    assert "Your team allows 4 requests per minute" in call(gateway, token).text


def test_hosted_tools_of_a_sign_in_come_from_the_person_or_team(
    gateway, fake, provider, alice_person
):
    fake.set_default(fu.text("ok"))
    token = signin.issue(person=alice_person.user, client="claude_code").access_token
    search = {**MESSAGE, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    assert call(gateway, token, search).status_code == 403  # nobody granted hosted tools
    alice_person.allowed_tools = ["web_search*"]
    alice_person.save()
    time.sleep(0.6)
    assert call(gateway, token, search).status_code == 200


async def _fire(gateway, credentials: list[tuple[str, str]], count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one(index: int) -> int:
            credential, path = credentials[index % len(credentials)]
            body = BODY if path == "/v1/messages" else RESPONSES_BODY
            headers = {"authorization": f"Bearer {credential}", "content-type": "application/json"}
            return (await http.post(gateway.url + path, content=body, headers=headers)).status_code

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_a_person_budget_holds_across_a_claude_code_sign_in_a_codex_sign_in_and_a_key(
    gateway, fake, provider, openai_provider, alice_person, recorded
):
    """200 concurrent calls from three credentials of one person, whose budget pays for about
    ten: every answer costs exactly its reservation, so the calls admitted are those whose
    reservations fit the budget, and the recorded spend stays within it."""
    fake.set_default(full_cost_reply())
    fake.openai.default = fo.response(
        "ok", input_tokens=RESPONSES_PROMPT, output_tokens=MAX_TOKENS, chunks=5, delay=0.02
    )
    budget = (RESERVATION + RESPONSES_RESERVATION) * 5
    alice_person.budget_usd = budget
    alice_person.budget_period = "day"
    alice_person.save()
    claude = signin.issue(person=alice_person.user, client="claude_code").access_token
    codex = signin.issue(person=alice_person.user, client="cli").access_token
    _, key = key_services.create_key(name="alice sdk", owner=alice_person.user)
    credentials = [(claude, "/v1/messages"), (codex, "/v1/responses"), (key, "/v1/messages")]
    statuses = asyncio.run(_fire(gateway, credentials, 200))
    assert set(statuses) <= {200, 402, 429}, statuses  # 429: OpenAI's insufficient_quota
    admitted = statuses.count(200)
    cheapest = min(RESERVATION, RESPONSES_RESERVATION)
    assert 1 <= admitted <= budget // cheapest
    events = recorded(admitted)
    assert {e.person_id for e in events} == {alice_person.pk}
    assert {e.credential for e in events} <= {"claude_code", "cli", "key"}
    spent = sum((e.cost_usd for e in UsageEvent.objects.all()), Decimal(0))
    assert spent <= budget
    assert budget - spent < max(RESERVATION, RESPONSES_RESERVATION)  # no room left unused


def test_usage_records_the_session_and_the_subagent(gateway, fake, provider, openai_provider,
                                                    alice_person, recorded):  # fmt: skip
    fake.set_default(fu.text("ok"))
    token = signin.issue(person=alice_person.user, client="claude_code").access_token
    headers = {"authorization": f"Bearer {token}", "x-claude-code-session-id": "sess-1",
               "x-claude-code-agent-id": "agent-7"}  # fmt: skip
    httpx.post(gateway.url + "/v1/messages", json=MESSAGE, headers=headers).raise_for_status()
    codex = {"authorization": f"Bearer {token}", "session-id": "sess-2", "thread-id": "thr-3"}
    body = {"model": OPENAI_MODEL, "input": "hi"}
    httpx.post(gateway.url + "/v1/responses", json=body, headers=codex).raise_for_status()
    first, second = recorded(2)
    assert (first.session_id, first.agent_id) == ("sess-1", "agent-7")
    assert (second.session_id, second.agent_id) == ("sess-2", "thr-3")
    assert (
        fake.requests[0].headers
        and dict(fake.requests[0].headers).get("x-claude-code-agent-id") == "agent-7"
    )  # forwarded: the provider may use it too
