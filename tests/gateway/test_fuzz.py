"""Fuzzing what faces the network: every proxy endpoint, streamed and not, and websocket frames.

Hypothesis builds requests that look like each protocol's (the fields the gateway reads, with
every type and shape JSON allows, deep nesting, odd unicode, huge numbers) against a real
gateway in front of the fake provider. The gateway itself must never answer 5xx (the fake
answers every forwarded request well), every websocket frame gets an answer, and when it is
all over no concurrency slot or budget reservation is left held.
"""

from __future__ import annotations

import asyncio
import json
import os
from decimal import Decimal

import httpx
import orjson
import pytest
import websockets
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmproxy.gateway import limits
from tests.fakes import MODEL, OPENAI_MODEL

pytestmark = pytest.mark.e2e

# Examples per run: 5,600 requests over the six HTTP endpoints and 2 x 500 websocket sessions
# of 1-5 frames (about 3,000 frames), with the hang-up and bad-input suites well over 10,000
# generated inputs per run. FUZZ_SCALE multiplies them.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def examples(count: int):
    return settings(
        max_examples=int(count * SCALE),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


def dumps(value: object) -> bytes:
    """JSON as a client may send it: big integers, escaped lone surrogates, deep nesting."""
    return json.dumps(value).encode()


text = st.text(max_size=12) | st.sampled_from(["", "\x00", "\ud7ff\ue000", "claude-*", "é" * 3])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)


def deep(levels: int) -> object:
    value: object = []
    for _ in range(levels):
        value = [value]
    return value


nesting = st.sampled_from([5, 200, 400]).map(deep)
models = st.sampled_from([MODEL, OPENAI_MODEL, "unknown-model"]) | anything
tool_types = st.sampled_from(
    ["web_search", "web_search_20250305", "code_interpreter", "custom", "bash_20250124",
     "function", "mcp", "file_search", "computer_use_preview", "image_generation"]
) | anything  # fmt: skip
tools = st.lists(
    st.fixed_dictionaries(
        {"type": tool_types},
        optional={"name": text, "max_uses": anything, "container": anything},
    )
    | anything,
    max_size=4,
)


def body_for(fields: dict):
    """A request body: usually an object with these fields (some missing, some odd), rarely
    something else altogether."""
    obj = st.fixed_dictionaries({}, optional=fields).map(dict)
    return st.one_of(
        obj.map(dumps),
        obj.map(dumps),
        obj.map(dumps),
        anything.map(dumps),
        st.binary(max_size=40),
    )


MESSAGES = body_for(
    {
        "model": models,
        "max_tokens": st.integers(-5, 10**20) | anything,
        "stream": st.booleans() | anything,
        "messages": st.just([{"role": "user", "content": "hi"}]) | anything | nesting,
        "tools": tools | anything,
        "mcp_servers": anything,
        "system": anything,
        "metadata": anything,
    }
)
RESPONSES = body_for(
    {
        "model": models,
        "input": st.just("hi") | anything | nesting | st.just([{"type": "compaction_trigger"}]),
        "stream": st.booleans() | anything,
        "tools": tools | anything,
        "max_output_tokens": st.integers(-5, 10**20) | anything,
        "previous_response_id": anything,
        "tool_choice": anything,
        "background": anything,
        "conversation": anything,
        "prompt": anything,
    }
)
CHAT = body_for(
    {
        "model": models,
        "messages": st.just([{"role": "user", "content": "hi"}]) | anything,
        "stream": st.booleans() | anything,
        "stream_options": anything,
        "max_tokens": anything,
        "max_completion_tokens": anything,
        "tools": tools | anything,
    }
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "anthropic-beta": st.text(alphabet="abc-,", max_size=20),
        "x-claude-code-session-id": st.text(alphabet="0123456789abcdef-", max_size=40),
        "session-id": st.text(alphabet="0123456789abcdef-", max_size=40),
        "x-codex-turn-metadata": st.sampled_from(['{"request_kind":"compaction"}', "{", ""]),
        "content-type": st.sampled_from(["application/json", "text/plain", ""]),
    },
)
ENDPOINTS = [
    ("/v1/messages", MESSAGES, 1500),
    ("/v1/messages/count_tokens", MESSAGES, 600),
    ("/anthropic/v1/messages", MESSAGES, 400),
    ("/v1/responses", RESPONSES, 1500),
    ("/v1/responses/compact", RESPONSES, 600),
    ("/v1/chat/completions", CHAT, 1000),
]


@pytest.fixture
def fuzzing(gateway, fake, provider, openai_provider, make_key):
    fake.set_default(None)
    # Limited in every way, so admission tracks slots and reservations for every call.
    secret = make_key(budget_usd=Decimal(10**6), max_concurrent=100, rpm=10**6, allowed_tools=["*"])
    yield gateway, secret
    assert_nothing_held()


def assert_nothing_held() -> None:
    if django_settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(django_settings.REDIS_URL)
        for name in client.scan_iter(f"{limits.PREFIX}slots:*"):
            assert client.zcard(name) == 0, name
        for name in client.scan_iter(f"{limits.PREFIX}resv:*"):
            assert client.hlen(name) == 0, name
        client.close()
    else:
        local = limits._local
        assert all(not held for held in local.slots.values()), local.slots
        assert all(not held for held in local.reservations.values()), local.reservations


def gateway_failed(answer: httpx.Response) -> bool:
    """A 5xx that the gateway made itself (the fake provider never answers one here)."""
    return answer.status_code >= 500


@pytest.mark.parametrize(("path", "bodies", "count"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_no_request_makes_the_gateway_fail(fuzzing, path, bodies, count):
    gateway, secret = fuzzing
    failures: list = []
    with httpx.Client(base_url=gateway.url, timeout=30) as http:

        @examples(count)
        @given(body=bodies, headers=HEADERS, auth=st.sampled_from(["x-api-key", "bearer"]))
        def run(body: bytes, headers: dict, auth: str) -> None:
            sent = {**headers}
            if auth == "x-api-key":
                sent["x-api-key"] = secret
            else:
                sent["authorization"] = f"Bearer {secret}"
            answer = http.post(path, content=body, headers=sent)
            if gateway_failed(answer):
                failures.append((body[:300], answer.status_code, answer.text[:300]))
            # Every answer is JSON or an SSE stream in the protocol's shape.
            kind = answer.headers.get("content-type", "")
            assert kind.startswith(("application/json", "text/event-stream")), (kind, body)

        run()
    assert failures == []


FRAMES = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("response.create")},
        optional={
            "model": models,
            "input": st.just("hi") | anything | nesting,
            "tools": tools | anything,
            "previous_response_id": anything,
            "generate": anything,
            "stream": anything,
            "max_output_tokens": anything,
        },
    ).map(dumps),
    anything.map(dumps),
    st.binary(max_size=30),
)


@pytest.mark.parametrize("provider_websockets", [True, False], ids=["upstream", "bridge"])
def test_every_websocket_frame_gets_an_answer(fuzzing, openai_provider, provider_websockets):
    gateway, secret = fuzzing
    openai_provider.websockets = provider_websockets
    openai_provider.save()
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    unanswered: list = []
    failures: list = []

    async def one_frame(socket, frame: bytes) -> None:
        try:
            await socket.send(frame.decode("utf-8", "replace"))
        except websockets.ConnectionClosed:
            unanswered.append(("socket closed before the frame", frame[:200]))
            return
        while True:
            try:
                event = orjson.loads(await asyncio.wait_for(socket.recv(), 15))
            except (TimeoutError, websockets.ConnectionClosed) as exc:
                unanswered.append((type(exc).__name__, frame[:200]))
                return
            if event.get("type") == "error" and event.get("status", 0) >= 500:
                failures.append((frame[:200], event))
            if event.get("type") in ("error", "response.completed", "response.failed",
                                     "response.incomplete"):  # fmt: skip
                return

    async def session(frames: list[bytes]) -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        async with websockets.connect(url, additional_headers=headers) as socket:
            for frame in frames:
                await one_frame(socket, frame)

    @examples(500)
    @given(frames=st.lists(FRAMES, min_size=1, max_size=5))
    def run(frames: list[bytes]) -> None:
        asyncio.run(session(frames))

    run()
    assert unanswered == [] and failures == []
