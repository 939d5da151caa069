"""The real Codex CLI (`codex exec`) through a real gateway, over HTTP and websockets."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.e2e.clients import run_codex
from tests.fakes import OPENAI_CREDENTIAL
from tests.fakes import fake_openai as fo

pytestmark = [pytest.mark.e2e, pytest.mark.cli]

CODEX_MODEL = "gpt-5.5"


@pytest.fixture
def codex_price(openai_provider):
    from billing.models import Price

    # the test's own rates, not the shipped row migrate added for this pattern
    Price.objects.filter(model_pattern="gpt-5.5*").delete()
    Price.objects.create(
        model_pattern="gpt-5.5*", provider_kind="openai", input_per_mtok=Decimal(5),
        output_per_mtok=Decimal(30), cache_read_per_mtok=Decimal("0.5"),
    )  # fmt: skip


def assert_fake_saw_only_the_provider_credential(fake, secret: str) -> None:
    assert fake.requests
    for request in fake.requests:
        headers = {name.lower(): value for name, value in request.headers}
        assert headers["authorization"] == f"Bearer {OPENAI_CREDENTIAL}"
        assert all(secret not in value for value in headers.values())


def agent_text(run) -> str:
    return " ".join(
        event["item"].get("text", "")
        for event in run.events
        if event.get("type") == "item.completed" and event["item"].get("type") == "agent_message"
    )


def cost(uncached: int, cached: int, output: int) -> Decimal:
    return (uncached * Decimal(5) + cached * Decimal("0.5") + output * Decimal(30)) / 10**6


@pytest.mark.parametrize(
    ("websockets", "provider_websockets"),
    [(False, False), (True, False), (True, True)],
    ids=["http", "websocket-bridged", "websocket-upstream"],
)
def test_codex_tool_turn_through_the_gateway(
    gateway, fake, openai_provider, make_openai_key, codex_price, recorded, tmp_path, sink,
    websockets, provider_websockets,
):  # fmt: skip
    openai_provider.websockets = provider_websockets
    openai_provider.save()
    secret = make_openai_key()
    fake.enqueue(
        fo.function_call(
            "exec_command",
            json.dumps({"cmd": "echo hi"}),
            input_tokens=3000,
            cached_tokens=1000,
            output_tokens=40,
        ),
        fo.response(
            "The command printed hi.", input_tokens=3100, cached_tokens=3000, output_tokens=12
        ),
    )
    run = run_codex(
        gateway.url, "run echo hi", home=tmp_path, sink=sink, key=secret, websockets=websockets
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "The command printed hi." in agent_text(run)
    posts = [r for r in fake.requests if r.method == "POST"]
    turns_sent = [r.json for r in posts]
    if provider_websockets:
        turns_sent = [f for f in fake.ws_frames if f.get("generate") is not False]
    assert len(turns_sent) == 2
    outputs = [i for i in turns_sent[1]["input"] if i.get("type") == "function_call_output"]
    assert outputs and "hi" in outputs[-1]["output"]
    assert_fake_saw_only_the_provider_credential(fake, secret)
    if provider_websockets:
        # Codex's frames went to the provider's own websocket, unchanged, over one socket.
        assert gateway.app.requests == [("WEBSOCKET", "/v1/responses")]
        assert fake.openai.ws_connections == 1 and posts == []
        assert all(f["type"] == "response.create" for f in fake.ws_frames)
    elif websockets:
        # Codex talked websocket to the gateway; the gateway bridged to the provider's HTTP.
        assert gateway.app.requests == [("WEBSOCKET", "/v1/responses")]
        assert fake.ws_frames == []
        assert all(r.json.get("stream") is True for r in posts)
    else:
        assert {path for _, path in gateway.app.requests} == {"/v1/responses"}
    events = recorded()
    turns = [e for e in events if e.input_tokens or e.output_tokens]
    assert [(e.input_tokens, e.cache_read_tokens, e.output_tokens) for e in turns] == [
        (2000, 1000, 40),
        (100, 3000, 12),
    ]
    assert turns[1].cost_usd == cost(100, 3000, 12)
    assert all(e.client == "codex" for e in events)


def test_codex_forced_compaction(
    gateway, fake, make_openai_key, codex_price, recorded, tmp_path, sink
):
    secret = make_openai_key()
    # The first answer reports more tokens than the limit, so Codex compacts before going on.
    fake.enqueue(
        fo.function_call(
            "exec_command", json.dumps({"cmd": "echo hi"}), input_tokens=9000, output_tokens=40
        )
    )
    fake.set_default(fo.response("Summary of the work so far.", input_tokens=900, output_tokens=50))
    run = run_codex(
        gateway.url,
        "run echo hi",
        home=tmp_path,
        sink=sink,
        key=secret,
        config={"model_auto_compact_token_limit": 1000},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    posts = [r for r in fake.requests if r.method == "POST"]
    kinds = [
        json.loads(dict((k.lower(), v) for k, v in r.headers)["x-codex-turn-metadata"])[
            "request_kind"
        ]
        for r in posts
    ]
    assert "compaction" in kinds
    events = recorded(len(posts))
    assert [e.kind for e in events] == kinds  # each call recorded with the kind Codex gave it
