"""Upstreams that break the protocol: each is a clear error in the client's protocol, quickly,
with one usage record and no credential in it."""

from __future__ import annotations

import time

import httpx
import pytest

from llmproxy.gateway import services as provider_services
from tests.fakes import MODEL, OPENAI_CREDENTIAL, OPENAI_MODEL, UPSTREAM_CREDENTIAL
from tests.fakes.bad_upstream import BadUpstream

pytestmark = pytest.mark.e2e

CALLS = {
    "anthropic": ("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": []}),
    "openai": ("/v1/responses", {"model": OPENAI_MODEL, "input": "hi"}),
}


@pytest.fixture
def bad():
    upstream = BadUpstream()
    yield upstream
    upstream.close()


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
@pytest.mark.parametrize("behaviour", ["close", "reset", "garbage"])
def test_an_upstream_that_does_not_answer_http_is_a_502(
    gateway, bad, provider, openai_provider, make_key, recorded, kind, behaviour
):
    bad.behaviour = behaviour
    chosen = provider if kind == "anthropic" else openai_provider
    provider_services.upsert_provider(
        name=chosen.name, kind=kind, base_url=bad.url, credential=chosen.credential
    )
    secret = make_key()
    path, body = CALLS[kind]
    for stream in (False, True):
        started = time.monotonic()
        answer = httpx.post(
            gateway.url + path, json={**body, "stream": stream},
            headers={"authorization": f"Bearer {secret}"}, timeout=30,
        )  # fmt: skip
        assert answer.status_code == 502, answer.text
        assert time.monotonic() - started < 5
        error = answer.json()["error"]
        if kind == "anthropic":
            assert error["type"] == "api_error"
        else:
            assert error["code"] == "upstream_unavailable"
        assert "could not be reached" in error["message"]
    events = recorded(2)
    assert [e.status for e in events] == [502, 502]
    for event in events:
        assert event.error and not event.partial
        assert UPSTREAM_CREDENTIAL not in event.error and OPENAI_CREDENTIAL not in event.error
