"""What the client gets for every way an upstream can fail, on every endpoint, streamed and not.

The table (docs/operations.md, "When a provider fails") is the test's parameters: each row
names the provider's behaviour and what the client gets. Every call, whatever happened,
leaves exactly one usage record.
"""

from __future__ import annotations

import httpx
import pytest

from llmproxy.gateway import services as provider_services
from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu
from tests.fakes.bad_upstream import BadUpstream

pytestmark = pytest.mark.e2e

# endpoint → (path, protocol, can stream)
ENDPOINTS = {
    "messages": ("/v1/messages", "anthropic", True),
    "count_tokens": ("/v1/messages/count_tokens", "anthropic", False),
    "responses": ("/v1/responses", "openai", True),
    "compact": ("/v1/responses/compact", "openai", False),
    "chat": ("/v1/chat/completions", "openai", True),
}

# behaviour → (status the client gets, what the body says, when it applies)
TABLE = {
    "refused": (502, "could not be reached", "any"),
    "reset": (502, "could not be reached", "any"),
    "closed without answering": (502, "could not be reached", "any"),
    "not HTTP": (502, "could not be reached", "any"),
    "no answer in time": (504, "did not answer in time", "any"),
    "401": (502, "credential", "any"),
    "403": (502, "refused the gateway's request", "any"),
    "429": (429, "slow down", "any"),
    "500": (502, "upstream broke", "any"),
    "529": (529, "overloaded", "any"),  # OpenAI clients have no 529: 503
    "breaks mid-answer": (200, "failed mid-answer", "stream"),
    "breaks mid-body": (502, "broke mid-answer", "body"),
    "ends early": (200, "", "stream"),
    "answers a body that is not JSON": (200, "", "body"),
}


def cases():
    for endpoint, (_, _, can_stream) in ENDPOINTS.items():
        for stream in (False, True) if can_stream else (False,):
            for behaviour, (_, _, when) in TABLE.items():
                if (when == "stream" and not stream) or (when == "body" and stream):
                    continue
                yield pytest.param(endpoint, stream, behaviour, id=f"{endpoint}-{behaviour}"
                                   + ("-stream" if stream else ""))  # fmt: skip


def request_body(endpoint: str, stream: bool) -> dict:
    if ENDPOINTS[endpoint][1] == "anthropic":
        body = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "x"}]}
    elif endpoint == "chat":
        body = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]}
    else:
        body = {"model": OPENAI_MODEL, "input": "x"}
    return {**body, "stream": True} if stream else body


def scripted(endpoint: str, behaviour: str):
    """The fake provider's answer for a behaviour it acts out itself."""
    anthropic = ENDPOINTS[endpoint][1] == "anthropic"
    if behaviour in ("401", "403", "429", "500", "529"):
        status = int(behaviour)
        message = {"429": "slow down", "500": "upstream broke", "529": "overloaded"}.get(
            behaviour, "no access"
        )
        headers = {"retry-after": "7"} if status == 429 else {}
        if anthropic:
            return fu.error(status, "api_error", message, headers=headers)
        return fo.openai_error(status, "server_error", message, headers=headers)
    if endpoint == "count_tokens":
        reply = fu.count_tokens()
    elif anthropic:
        reply = fu.text("an answer of several chunks", input_tokens=40, output_tokens=8, chunks=4)
    elif endpoint == "chat":
        reply = fo.chat("an answer of several chunks", prompt_tokens=40, completion_tokens=8)
    else:
        reply = fo.response("an answer of several chunks", input_tokens=40, output_tokens=8)
    if behaviour == "no answer in time":
        reply.head_delay = 2.0
    elif behaviour in ("breaks mid-answer", "breaks mid-body", "ends early"):
        if anthropic and behaviour == "ends early":
            reply.end_after = 4
        elif anthropic:
            reply.drop_after = 4
        else:
            reply.cut_after = 4
            reply.cut = "end" if behaviour == "ends early" else "drop"
    return reply


@pytest.fixture
def bad_upstream():
    upstream = BadUpstream()
    yield upstream
    upstream.close()


RAW = {"reset": "reset", "closed without answering": "close", "not HTTP": "garbage"}


@pytest.mark.parametrize(("endpoint", "stream", "behaviour"), list(cases()))
def test_the_client_gets_the_documented_answer_and_one_usage_record(
    gateway, fake, provider, openai_provider, make_key, recorded, bad_upstream, settings,
    endpoint, stream, behaviour,
):  # fmt: skip
    path, protocol, _ = ENDPOINTS[endpoint]
    chosen = provider if protocol == "anthropic" else openai_provider
    if behaviour in RAW or behaviour == "refused":
        bad_upstream.behaviour = RAW.get(behaviour, "close")
        url = bad_upstream.url
        if behaviour == "refused":
            bad_upstream.close()  # nothing listens there any more
        provider_services.upsert_provider(
            name=chosen.name, kind=protocol, base_url=url, credential=chosen.credential
        )
    elif behaviour == "answers a body that is not JSON":
        fake.not_json = True
    else:
        fake.enqueue(scripted(endpoint, behaviour))
    if behaviour == "no answer in time":
        settings.LLMPROXY_READ_TIMEOUT = 0.5
    secret = make_key()
    answer = httpx.post(
        gateway.url + path, json=request_body(endpoint, stream),
        headers={"authorization": f"Bearer {secret}"}, timeout=30,
    )  # fmt: skip
    status, says, _ = TABLE[behaviour]
    if status == 529 and protocol == "openai":
        status = 503
    assert answer.status_code == status, answer.text
    if status != 200:
        error = answer.json()
        message = error["error"]["message"]
        assert says in message, message
        if protocol == "anthropic":
            assert error["type"] == "error"
        if status == 429:
            assert answer.headers["retry-after"] == "7"
    elif behaviour == "breaks mid-answer":
        assert answer.text.rstrip().splitlines()[-1].startswith("data: ")
        assert says in answer.text and '"type":"error"' in answer.text
    (event,) = recorded(1)
    assert event.status == (status if status != 200 else 200)
