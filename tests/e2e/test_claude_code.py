"""The real Claude Code CLI (`claude -p`) through a real gateway, offline against the fake."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.e2e.clients import run_claude
from tests.fakes import MODEL, UPSTREAM_CREDENTIAL
from tests.fakes import fake_provider as fu

pytestmark = [pytest.mark.e2e, pytest.mark.cli]

ARGS = ("--model", MODEL)


@pytest.fixture(autouse=True)
def nothing_leaves_the_machine(sink):
    yield
    # nothing the CLI did went to an outside host: the sink saw no request at all
    assert sink.requests == []


def assert_fake_saw_only_the_provider_credential(fake, secret: str) -> None:
    assert fake.requests
    for request in fake.requests:
        headers = {name.lower(): value for name, value in request.headers}
        assert headers["x-api-key"] == UPSTREAM_CREDENTIAL
        assert "authorization" not in headers
        assert all(secret not in value for value in headers.values())


@pytest.mark.parametrize("auth", ["api_key", "auth_token"])
def test_claude_p_through_the_gateway(gateway, fake, make_key, recorded, tmp_path, sink, auth):
    secret = make_key()
    fake.enqueue(
        fu.text(
            "Hi from the fake provider.",
            input_tokens=321,
            output_tokens=17,
            cache_read=2000,
            cache_write_5m=500,
        )
    )
    run = run_claude(gateway.url, "say hi", home=tmp_path, sink=sink, args=ARGS, **{auth: secret})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["result"] == "Hi from the fake provider."
    assert run.result["is_error"] is False
    assert len(fake.requests) == 1
    seen = fake.requests[0]
    assert seen.path == "/v1/messages" and seen.query == "beta=true"
    assert seen.json["messages"][1]["role"] == "system"  # passed through, not validated
    assert_fake_saw_only_the_provider_credential(fake, secret)

    (event,) = recorded(1)
    assert event.client == "claude-code" and event.model == MODEL
    assert (event.input_tokens, event.output_tokens) == (321, 17)
    assert (event.cache_read_tokens, event.cache_write_tokens) == (2000, 500)
    expected = (
        Decimal(321 * 3 + 17 * 15)
        + Decimal(2000) * Decimal("0.30")
        + Decimal(500) * Decimal("3.75")
    ) / Decimal(1_000_000)
    assert event.cost_usd == expected
    assert event.session_id == run.result["session_id"]


def test_a_tool_turn_through_the_gateway(gateway, fake, make_key, recorded, tmp_path, sink):
    secret = make_key()
    fake.enqueue(
        fu.tool_use(
            name="Bash",
            input={"command": "echo hi", "description": "Print hi"},
            thinking="The user wants me to run echo.",
        ),
        fu.text("The command printed hi.", input_tokens=50, output_tokens=8),
    )
    run = run_claude(
        gateway.url,
        "run echo hi",
        home=tmp_path,
        sink=sink,
        api_key=secret,
        args=(*ARGS, "--allowedTools", "Bash"),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["result"] == "The command printed hi."
    assert len(fake.requests) == 2
    followup = fake.requests[1].json["messages"]
    results = [
        b
        for m in followup
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert results and "hi" in str(results[-1]["content"])
    thinking = [
        b
        for m in followup
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "thinking"
    ]
    assert thinking and thinking[0]["signature"]  # echoed verbatim, signature intact
    events = recorded(2)
    assert [e.output_tokens for e in events] == [20, 8]


def test_a_budget_refusal_is_reported_in_one_attempt(
    gateway, fake, make_key, recorded, tmp_path, sink
):
    secret = make_key(budget_usd=Decimal(0))
    run = run_claude(gateway.url, "say hi", home=tmp_path, sink=sink, api_key=secret, args=ARGS)
    assert run.returncode != 0
    assert run.result["is_error"] is True
    assert "budget" in run.result["result"].lower()
    posts = [r for r in gateway.app.requests if r == ("POST", "/v1/messages")]
    assert len(posts) == 1, "x-should-retry: false must stop Claude Code's retries"
    assert run.seconds < 30
    assert fake.requests == []
    assert recorded(0) == []


def test_a_mid_stream_failure_is_retried_unstreamed_and_billed_per_call(
    gateway, fake, make_key, recorded, tmp_path, sink
):
    secret = make_key()
    fake.enqueue(
        fu.midstream_error(after_events=3, type="overloaded_error"),
        fu.text("Recovered without streaming.", input_tokens=40, output_tokens=6),
    )
    run = run_claude(gateway.url, "say hi", home=tmp_path, sink=sink, api_key=secret, args=ARGS)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["result"] == "Recovered without streaming."
    # 2.1.197 dropped "stream" from the fallback request; 2.1.332 sends "stream": false.
    assert [bool(r.json.get("stream")) for r in fake.requests] == [True, False]
    first, second = recorded(2)
    assert first.error and first.status == 200
    assert (second.input_tokens, second.output_tokens, second.partial) == (40, 6, False)
    assert second.cost_usd == Decimal(40 * 3 + 6 * 15) / Decimal(1_000_000)
