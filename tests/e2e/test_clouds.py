"""The real CLIs through providers of the cloud kinds: Claude Code through Bedrock and
Vertex, Codex through Azure, each against its fake on loopback, with usage and cost
recorded at the provider's own price."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from accounts import services as key_services
from tests.e2e.clients import run_claude, run_codex
from tests.fakes import MODEL
from tests.fakes import fake_azure as fa
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu

pytestmark = [pytest.mark.e2e, pytest.mark.cli]

ARGS = ("--model", MODEL)


@pytest.fixture(autouse=True)
def nothing_leaves_the_machine(sink, request):
    yield
    # Claude Code makes no outside call at all; Codex's own (github.com, its update check)
    # were refused by the sink, like in test_codex.py.
    if "claude" in request.node.name:
        assert sink.requests == []


def new_key() -> str:
    return key_services.create_key(name="cloud key", budget_usd=Decimal(5))[1]


def tool_results(messages: list[dict]) -> list[dict]:
    return [
        block
        for message in messages
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]


def calls(fake) -> list:
    """The model calls the fake saw (not its token endpoint's)."""
    return [r for r in fake.requests if r.path != "/token"]


def claude_text_turn(gateway, fake, recorded, tmp_path, sink, price: tuple):
    secret = new_key()
    fake.enqueue(fu.text("Hi from the cloud.", input_tokens=321, output_tokens=17))
    run = run_claude(gateway.url, "say hi", home=tmp_path, sink=sink, api_key=secret, args=ARGS)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["result"] == "Hi from the cloud."
    (seen,) = calls(fake)
    assert all(secret not in value for _, value in seen.headers)
    (event,) = recorded(1)
    assert event.client == "claude-code" and event.model == MODEL
    assert (event.input_tokens, event.output_tokens) == (321, 17)
    assert event.cost_usd == Decimal(321 * price[0] + 17 * price[1]) / 10**6
    return seen


def claude_tool_turn(gateway, fake, recorded, tmp_path, sink):
    secret = new_key()
    fake.enqueue(
        fu.tool_use(
            "Bash",
            {"command": "echo hi", "description": "Print hi"},
            thinking="The user wants me to run echo.",
        ),
        fu.text("The command printed hi.", input_tokens=50, output_tokens=8),
    )
    run = run_claude(gateway.url, "run echo hi", home=tmp_path, sink=sink, api_key=secret,
                     args=(*ARGS, "--allowedTools", "Bash"))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["result"] == "The command printed hi."
    _, followup = calls(fake)
    results = tool_results(followup.json["messages"])
    assert results and "hi" in str(results[-1]["content"])
    events = recorded(2)
    assert [e.output_tokens for e in events] == [20, 8]
    assert all(e.cost_usd > 0 for e in events)


# --- Bedrock -----------------------------------------------------------------------------


def test_claude_code_through_bedrock(gateway, bedrock, bedrock_provider, recorded, tmp_path, sink):
    seen = claude_text_turn(gateway, bedrock, recorded, tmp_path, sink, price=(4, 20))
    assert seen.path.endswith("/invoke-with-response-stream")
    assert bedrock.signature_failures == []


def test_a_claude_code_tool_turn_through_bedrock(
    gateway, bedrock, bedrock_provider, recorded, tmp_path, sink
):
    claude_tool_turn(gateway, bedrock, recorded, tmp_path, sink)
    assert bedrock.signature_failures == []


# --- Vertex ------------------------------------------------------------------------------


def test_claude_code_through_vertex(gateway, vertex, vertex_provider, recorded, tmp_path, sink):
    seen = claude_text_turn(
        gateway, vertex, recorded, tmp_path, sink, price=(Decimal("3.3"), Decimal("16.5"))
    )
    assert seen.path.endswith(":streamRawPredict")
    assert vertex.token_requests == 1 and vertex.refused_tokens == []


def test_a_claude_code_tool_turn_through_vertex(
    gateway, vertex, vertex_provider, recorded, tmp_path, sink
):
    claude_tool_turn(gateway, vertex, recorded, tmp_path, sink)
    assert vertex.token_requests == 1 and vertex.refused_tokens == []


# --- Azure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("websockets", "provider_websockets"),
    [(False, False), (True, False), (True, True)],
    ids=["http", "websocket-bridged", "websocket-upstream"],
)
def test_codex_tool_turn_through_azure(
    gateway, azure, add_azure, recorded, tmp_path, sink, websockets, provider_websockets
):
    from billing.models import Price

    provider = add_azure(pattern="gpt-5.5*")
    provider.websockets = provider_websockets
    provider.save()
    Price.objects.create(
        model_pattern="gpt-5.5*", provider_kind="openai", provider=provider,
        input_per_mtok=Decimal(6), output_per_mtok=Decimal(36), cache_read_per_mtok=Decimal("0.6"),
    )  # fmt: skip
    secret = new_key()
    azure.enqueue(
        fo.function_call("exec_command", json.dumps({"cmd": "echo hi"}), input_tokens=3000,
                         cached_tokens=1000, output_tokens=40),
        fo.response("The command printed hi.", input_tokens=3100, cached_tokens=3000,
                    output_tokens=12),
    )  # fmt: skip
    run = run_codex(gateway.url, "run echo hi", home=tmp_path, sink=sink, key=secret,
                    websockets=websockets)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    said = " ".join(
        e["item"].get("text", "") for e in run.events
        if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"
    )  # fmt: skip
    assert "The command printed hi." in said
    posts = [r for r in azure.requests if r.method == "POST"]
    if provider_websockets:
        sent = [f for f in azure.ws_frames if f.get("generate") is not False]
        assert posts == [] and azure.openai.ws_connections == 1
        assert [r.path for r in azure.requests] == ["/openai/v1/responses"]  # the upgrade
    else:
        sent = [r.json for r in posts]
        assert {r.path for r in posts} == {"/openai/v1/responses"}
    assert len(sent) == 2 and all(turn["model"] == fa.DEPLOYMENT for turn in sent)
    outputs = [i for i in sent[1]["input"] if i.get("type") == "function_call_output"]
    assert outputs and "hi" in outputs[-1]["output"]
    for request in azure.requests:
        headers = {k.lower(): v for k, v in request.headers}
        assert headers["api-key"] == fa.API_KEY
        assert all(secret not in value for value in headers.values())
    turns = [e for e in recorded() if e.input_tokens or e.output_tokens]
    assert [(e.input_tokens, e.cache_read_tokens, e.output_tokens) for e in turns] == [
        (2000, 1000, 40), (100, 3000, 12),
    ]  # fmt: skip
    assert turns[1].cost_usd == (100 * 6 + 3000 * Decimal("0.6") + 12 * 36) / Decimal(10**6)
    assert all(e.client == "codex" and e.provider_id == provider.pk for e in turns)
