"""OpenAI Responses and Chat Completions through a real gateway, with the official SDK."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import httpx
import openai
import orjson
import pytest
import websockets

from tests.fakes import OPENAI_CREDENTIAL, OPENAI_MODEL
from tests.fakes import fake_openai as fo

pytestmark = pytest.mark.e2e

PRICE_IN, PRICE_CACHED, PRICE_OUT = Decimal("1.25"), Decimal("0.125"), Decimal(10)


def client(gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)


def cost(uncached: int, cached: int, output: int) -> Decimal:
    return (uncached * PRICE_IN + cached * PRICE_CACHED + output * PRICE_OUT) / Decimal(10**6)


def assert_only_provider_credential(fake, secret: str) -> None:
    assert fake.requests
    for request in fake.requests:
        headers = {name.lower(): value for name, value in request.headers}
        assert headers.get("authorization") == f"Bearer {OPENAI_CREDENTIAL}"
        assert all(secret not in value for value in headers.values())


def test_responses_stream(gateway, fake, make_openai_key, recorded):
    secret = make_openai_key()
    fake.enqueue(
        fo.response(
            "Streamed hello.",
            input_tokens=1000,
            cached_tokens=600,
            output_tokens=50,
            reasoning_tokens=20,
        )
    )
    with client(gateway, secret).responses.stream(model=OPENAI_MODEL, input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Streamed hello."
    assert final.usage.input_tokens == 1000
    assert_only_provider_credential(fake, secret)
    (event,) = recorded(1)
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (400, 600, 50)
    assert event.reasoning_tokens == 20
    assert event.cost_usd == cost(400, 600, 50)
    assert event.client == "openai-python" and event.endpoint == "/v1/responses"


def test_responses_non_stream_and_hosted_tool_calls(gateway, fake, make_openai_key, recorded):
    secret = make_openai_key(allowed_tools=["web_search*"])
    search = {"type": "web_search_call", "id": "ws_1", "status": "completed"}
    fake.enqueue(fo.response("Found it.", input_tokens=100, output_tokens=10, items=[search]))
    answer = client(gateway, secret).responses.create(
        model=OPENAI_MODEL, input="search", tools=[{"type": "web_search"}]
    )
    assert answer.output_text == "Found it."
    (event,) = recorded(1)
    assert event.tool_calls == {"web_search": 1}
    assert event.cost_usd == cost(100, 0, 10) + Decimal("0.01")


def test_code_interpreter_containers_are_priced_by_memory(gateway, fake, make_openai_key, recorded):
    secret = make_openai_key(allowed_tools=["code_interpreter"])
    call = {"type": "code_interpreter_call", "id": "ci_1", "container_id": "cntr_1"}
    fake.enqueue(fo.response("Ran it.", input_tokens=10, output_tokens=1, items=[call, call]))
    client(gateway, secret).responses.create(
        model=OPENAI_MODEL,
        input="run",
        tools=[{"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}}],
    )
    (event,) = recorded(1)
    assert event.tool_calls == {"4g": 1}  # two calls, one container
    assert event.cost_usd == cost(10, 0, 1) + Decimal("0.12")


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search", "external_web_access": False},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"},
        {"type": "code_interpreter", "container": {"type": "auto"}},
    ],
)
def test_refused_hosted_tools_are_taken_out_of_the_request(gateway, fake, make_openai_key, tool):
    secret = make_openai_key()
    function = {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}
    raw = client(gateway, secret).responses.with_raw_response.create(
        model=OPENAI_MODEL, input="x", tools=[function, tool]
    )
    assert raw.headers["x-llmproxy-removed-tools"] == tool["type"]
    assert fake.requests[-1].json["tools"] == [function]


def test_a_forced_refused_tool_and_background_are_403(gateway, fake, make_openai_key):
    secret = make_openai_key()
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client(gateway, secret).responses.create(
            model=OPENAI_MODEL,
            input="x",
            tools=[{"type": "web_search"}],
            tool_choice={"type": "web_search"},
        )
    assert raised.value.body["type"] == "permission_error"
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway, secret).responses.create(model=OPENAI_MODEL, input="x", background=True)
    assert fake.requests == []
    allowed = make_openai_key(allow_background=True)
    client(gateway, allowed).responses.create(model=OPENAI_MODEL, input="x", background=True)
    assert fake.requests[-1].json["background"] is True


def test_client_tools_are_always_allowed(gateway, fake, make_openai_key):
    secret = make_openai_key()
    tools = [
        {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
        {"type": "custom", "name": "apply_patch"},
        {"type": "local_shell"},
        {"type": "tool_search"},
        {"type": "some_future_client_tool"},
    ]
    fake.enqueue(fo.function_call())
    answer = client(gateway, secret).responses.create(model=OPENAI_MODEL, input="x", tools=tools)
    assert answer.output[0].type == "function_call"


def test_chat_stream_without_include_usage_gets_no_usage_chunk(
    gateway, fake, make_openai_key, recorded
):
    secret = make_openai_key()
    fake.enqueue(fo.chat("Chatty.", prompt_tokens=30, completion_tokens=7, cached_tokens=10))
    chunks = list(
        client(gateway, secret).chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Chatty."
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
    (event,) = recorded(1)
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (20, 10, 7)
    assert event.cost_usd == cost(20, 10, 7)


def test_chat_stream_with_include_usage_keeps_it(gateway, fake, make_openai_key, recorded):
    secret = make_openai_key()
    fake.enqueue(fo.chat("Counted.", prompt_tokens=12, completion_tokens=3))
    chunks = list(
        client(gateway, secret).chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 12
    assert recorded(1)[0].output_tokens == 3


def test_chat_non_stream(gateway, fake, make_openai_key, recorded):
    secret = make_openai_key()
    fake.enqueue(fo.chat("Plain.", prompt_tokens=5, completion_tokens=2))
    answer = client(gateway, secret).chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Plain."
    assert recorded(1)[0].cost_usd == cost(5, 0, 2)


def test_errors_in_openai_shape(gateway, fake, make_openai_key):
    response = httpx.post(
        gateway.url + "/v1/responses",
        headers={"authorization": "Bearer llmp-nope"},
        json={"model": OPENAI_MODEL, "input": "x"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-should-retry"] == "false"
    secret = make_openai_key(budget_usd=Decimal(0))
    with pytest.raises(openai.RateLimitError) as raised:
        client(gateway, secret).responses.create(model=OPENAI_MODEL, input="x")
    assert raised.value.body["code"] == "insufficient_quota"
    assert raised.value.response.headers["x-should-retry"] == "false"
    bad = httpx.post(
        gateway.url + "/openai/v1/responses",
        headers={"authorization": f"Bearer {secret}"},
        content=b"{oops",
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests == []


def test_upstream_errors_keep_their_status_and_retry_headers(gateway, fake, make_openai_key):
    secret = make_openai_key()
    fake.enqueue(
        fo.openai_error(
            429, "requests", "slow down", "rate_limit_exceeded", headers={"retry-after": "3"}
        )
    )
    with pytest.raises(openai.RateLimitError) as raised:
        client(gateway, secret).responses.create(model=OPENAI_MODEL, input="x")
    assert raised.value.response.headers["retry-after"] == "3"
    fake.enqueue(fo.openai_error(401, "invalid_request_error", "bad key", "invalid_api_key"))
    with pytest.raises(openai.APIStatusError) as raised:
        client(gateway, secret).responses.create(model=OPENAI_MODEL, input="x")
    assert raised.value.status_code == 502 and "fake-openai" in raised.value.message


def test_codex_headers_pass_both_ways(gateway, fake, make_openai_key):
    secret = make_openai_key()
    fake.enqueue(
        fo.response(
            "ok",
            headers={"x-codex-turn-state": "state-1", "openai-organization": "acme-secret-org"},
        )
    )
    response = httpx.post(
        gateway.url + "/v1/responses",
        headers={
            "authorization": f"Bearer {secret}",
            "x-codex-turn-state": "state-0",
            "x-codex-turn-metadata": '{"request_kind":"turn"}',
            "session-id": "thr-1",
            "originator": "codex_exec",
            "openai-organization": "client-org",
        },
        json={"model": OPENAI_MODEL, "input": "x"},
    )
    assert response.headers["x-codex-turn-state"] == "state-1"
    assert "openai-organization" not in response.headers
    sent = {name.lower(): value for name, value in fake.requests[-1].headers}
    assert sent["x-codex-turn-state"] == "state-0" and sent["session-id"] == "thr-1"
    assert sent["originator"] == "codex_exec" and "openai-organization" not in sent


def test_models_in_openai_shape(gateway, fake, make_openai_key):
    secret = make_openai_key(allowed_models=["gpt-test-*"])
    ids = [m.id for m in client(gateway, secret).models.list()]
    assert ids == ["gpt-test-5", "gpt-test-mini"]


def test_compaction_is_recorded_as_such(gateway, fake, make_openai_key, recorded):
    secret = make_openai_key()
    fake.enqueue(fo.response(compaction=True, input_tokens=5000, output_tokens=300))
    body = {
        "model": OPENAI_MODEL,
        "input": [{"role": "user", "content": "x"}, {"type": "compaction_trigger"}],
    }
    response = httpx.post(
        gateway.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {secret}"}
    )
    assert response.json()["output"][0]["type"] == "compaction"
    assert fake.requests[-1].json == body  # forwarded untouched
    fake.enqueue(fo.response(compaction=True, input_tokens=10, output_tokens=1))
    compact = httpx.post(
        gateway.url + "/v1/responses/compact",
        json={"model": OPENAI_MODEL, "input": []},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert compact.status_code == 200
    assert [e.kind for e in recorded(2)] == ["compaction", "compaction"]


def test_identical_compactions_in_flight_go_upstream_once(gateway, fake, make_openai_key, recorded):
    secret = make_openai_key()
    fake.set_default(fo.response(compaction=True, input_tokens=9000, output_tokens=400, delay=0.05))
    body = {
        "model": OPENAI_MODEL,
        "stream": True,
        "input": [{"role": "user", "content": "long history"}, {"type": "compaction_trigger"}],
    }
    headers = {"authorization": f"Bearer {secret}"}
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(gateway.url + "/v1/responses", json=body, headers=headers))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.text for a in answers}) == 1 and '"compaction"' in answers[0].text
    assert len(fake.requests) == 1
    assert sum(a.headers.get("x-llmproxy-shared") == "true" for a in answers) == 2
    (event,) = recorded(1)
    assert event.kind == "compaction" and event.input_tokens == 9000


def ws_url(gateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1/responses"


async def frames_until_done(socket) -> list[dict]:
    events = []
    while True:
        event = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "error"):
            return events


async def test_websocket_mode_as_codex_uses_it(gateway, fake, make_openai_key, recorded):
    from asgiref.sync import sync_to_async

    secret = await sync_to_async(make_openai_key)()
    fake.enqueue(
        fo.function_call(input_tokens=200, output_tokens=20),
        fo.response("All done.", input_tokens=260, cached_tokens=200, output_tokens=9),
    )
    headers = {
        "Authorization": f"Bearer {secret}",
        "openai-beta": "responses_websockets=2026-02-06",
    }
    base = {"model": OPENAI_MODEL, "store": False, "tools": [], "stream": True}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(
            orjson.dumps(
                {
                    "type": "response.create",
                    **base,
                    "generate": False,
                    "input": [{"role": "developer", "content": "base"}],
                }
            )
        )
        warm = await frames_until_done(socket)
        assert warm[-1]["response"]["usage"]["input_tokens"] == 0
        turn = [{"type": "message", "role": "user", "content": "run echo hi"}]
        await socket.send(orjson.dumps({"type": "response.create", **base, "input": turn}))
        first = await frames_until_done(socket)
        call = first[-1]["response"]["output"][0]
        assert call["type"] == "function_call"
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "hi"}
        await socket.send(
            orjson.dumps(
                {
                    "type": "response.create",
                    **base,
                    "input": [output],
                    "previous_response_id": first[-1]["response"]["id"],
                }
            )
        )
        second = await frames_until_done(socket)
        assert second[-1]["response"]["output"][0]["content"][0]["text"] == "All done."
    # the warm-up never went upstream; the follow-up went with the whole history
    upstream = [r.json for r in fake.requests if r.method == "POST"]
    assert len(upstream) == 2
    assert "previous_response_id" not in upstream[1]
    assert [i.get("type") for i in upstream[1]["input"]] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    assert_only_provider_credential(fake, secret)
    events = await sync_to_async(recorded)(2)
    assert [e.input_tokens for e in events] == [200, 60]
    assert events[1].cost_usd == cost(60, 200, 9)


async def test_websocket_refusals_are_error_events(gateway, fake, make_openai_key):
    from asgiref.sync import sync_to_async

    headers = {"Authorization": "Bearer llmp-invalid"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        event = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        assert event["type"] == "error" and event["status"] == 401
    secret = await sync_to_async(make_openai_key)(budget_usd=Decimal(0))
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(
            orjson.dumps({"type": "response.create", "model": OPENAI_MODEL, "input": "x"})
        )
        event = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        assert event["status"] == 429 and event["error"]["code"] == "insufficient_quota"
        await socket.send(b"not json")
        event = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        assert event["status"] == 400
    assert fake.requests == [] or all(r.method == "GET" for r in fake.requests)


async def test_websockets_switched_off_answer_426_so_codex_uses_http(
    gateway, fake, make_openai_key, settings
):
    settings.LLMPROXY_WEBSOCKETS = False
    with pytest.raises(websockets.InvalidStatus) as raised:
        async with websockets.connect(ws_url(gateway)):
            pass
    assert raised.value.response.status_code == 426


async def test_websocket_hang_up_mid_response_cancels_upstream_and_settles(
    gateway, fake, make_openai_key, recorded
):
    from asgiref.sync import sync_to_async

    secret = await sync_to_async(make_openai_key)()
    fake.enqueue(
        fo.response("slow " * 50, input_tokens=77, output_tokens=100, chunks=50, delay=0.05)
    )
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(
            orjson.dumps({"type": "response.create", "model": OPENAI_MODEL, "input": "x"})
        )
        first = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        assert first["type"] == "response.created"
    for _ in range(100):
        if fake.disconnects:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == 1
    (event,) = await sync_to_async(recorded)(1)
    assert event.partial and event.error == "client disconnected"
