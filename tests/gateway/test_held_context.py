"""Admission reserves for context the provider holds, which the body does not carry: the
previous response a request continues, stored conversations and prompts, files and URLs."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async

from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu
from tests.gateway.test_openai_e2e import frames_until_done, ws_url

pytestmark = pytest.mark.e2e

# 100,000 held tokens at gpt-test's $1.25/M input cost $0.125 to reserve; a small request
# with 10 output tokens reserves a fraction of a cent.
SMALL = {"model": OPENAI_MODEL, "input": "hi", "max_output_tokens": 10}


def responses(gateway, secret: str, **extra) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/responses", json={**SMALL, **extra},
        headers={"authorization": f"Bearer {secret}"},
    )  # fmt: skip


def refused_for_budget(answer: httpx.Response) -> bool:
    return answer.status_code == 429 and answer.json()["error"]["code"] == "insufficient_quota"


@pytest.mark.parametrize(
    "extra",
    [
        {"previous_response_id": "resp_made_elsewhere"},
        {"conversation": "conv_123"},
        {"prompt": {"id": "pmpt_123"}},
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": "https://example.com/cat.png"}
                    ],
                }
            ]
        },
    ],
    ids=["previous-response", "conversation", "prompt", "file", "image-url"],
)
def test_context_held_at_the_provider_is_reserved(gateway, fake, make_openai_key, extra):
    secret = make_openai_key(budget_usd=Decimal("0.05"))
    fake.set_default(fo.response("ok", input_tokens=5, output_tokens=2))
    assert responses(gateway, secret).status_code == 200  # the same request, self-contained
    held = responses(gateway, secret, **extra)
    assert refused_for_budget(held), held.text
    assert len([r for r in fake.requests if r.method == "POST"]) == 1  # never went upstream


def test_a_previous_response_the_gateway_saw_reserves_its_recorded_context(
    gateway, fake, make_openai_key, recorded
):
    """Continuing a response of the same key reserves that response's context (its prompt
    and output as recorded: 2,300 tokens here), not the 100,000-token floor."""
    secret = make_openai_key(budget_usd=Decimal("0.02"))
    fake.enqueue(
        fo.response("first", input_tokens=2000, output_tokens=300),
        fo.response("second", input_tokens=2310, output_tokens=5),
    )
    first = responses(gateway, secret)
    assert first.status_code == 200
    second = responses(gateway, secret, previous_response_id=first.json()["id"])
    assert second.status_code == 200, second.text
    left = Decimal(second.headers["x-llmproxy-budget-remaining-usd"])
    # Remaining after the second's reservation: the budget less the first call's cost and at
    # least the 2,300 held tokens at the input rate (and at most the floor's $0.125).
    first_cost = recorded(2)[0].cost_usd
    assert left <= Decimal("0.02") - first_cost - 2300 * Decimal("1.25") / 10**6
    assert left > 0


async def test_codex_websocket_turns_reserve_the_previous_turns_context(
    gateway, fake, openai_provider, make_openai_key, recorded
):
    openai_provider.websockets = True
    await sync_to_async(openai_provider.save)()
    secret = await sync_to_async(make_openai_key)(budget_usd=Decimal("0.02"))
    fake.enqueue(
        fo.response("first", input_tokens=2000, output_tokens=300),
        fo.response("second", input_tokens=2310, output_tokens=5),
    )
    headers = {"Authorization": f"Bearer {secret}"}
    turn = {"type": "response.create", **SMALL}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(orjson.dumps(turn))
        first = (await frames_until_done(socket))[-1]["response"]
        await socket.send(orjson.dumps({**turn, "previous_response_id": first["id"]}))
        second = (await frames_until_done(socket))[-1]
        assert second["type"] == "response.completed", second
        await socket.send(orjson.dumps({**turn, "previous_response_id": "resp_unknown"}))
        unknown = (await frames_until_done(socket))[-1]
    assert unknown["type"] == "error" and unknown["error"]["code"] == "insufficient_quota"
    assert len(await sync_to_async(recorded)(2)) == 2


@pytest.mark.parametrize(
    "source",
    [
        {"type": "url", "url": "https://example.com/paper.pdf"},
        {"type": "file", "file_id": "file_011"},
    ],
    ids=["url", "file"],
)
def test_anthropic_documents_by_url_or_file_are_reserved(gateway, fake, make_key, source):
    secret = make_key(budget_usd=Decimal("0.05"))
    fake.set_default(fu.text("ok"))
    content = [{"type": "document", "source": source}, {"type": "text", "text": "summarise"}]
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": content}]}
    answer = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": secret})
    # 100,000 held tokens at the dearest claude-test input rate ($6/M) is $0.60 to reserve.
    assert answer.status_code == 402 and answer.json()["error"]["type"] == "billing_error"
    assert fake.requests == []
