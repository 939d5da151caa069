"""The request view: the few fields the gateway reads, decoded without the rest of the body.

Whatever the body, reading it through the view must decide exactly what the full parse
decides: the same RequestInfo, or the same error.
"""

from __future__ import annotations

import json

import msgspec
import orjson
import pytest

from llmproxy.gateway.errors import ProxyError
from llmproxy.gateway.protocols import anthropic, openai
from llmproxy.gateway.protocols.base import parse_json_object
from tests.samples import SAMPLES, asgi_headers, captured_request

ENDPOINTS = {
    "/v1/messages": (anthropic.PROTOCOL, anthropic.MESSAGES),
    "/v1/messages/count_tokens": (anthropic.PROTOCOL, anthropic.COUNT_TOKENS),
    "/v1/responses": (openai.PROTOCOL, openai.RESPONSES),
    "/v1/responses/compact": (openai.PROTOCOL, openai.COMPACT),
    "/v1/chat/completions": (openai.PROTOCOL, openai.CHAT),
}


def decided(protocol, endpoint, data_of, body: bytes, headers) -> object:
    try:
        return protocol.inspect(endpoint, data_of(body), headers)
    except ProxyError as error:
        return (error.kind, error.message)


def typed_view(protocol):
    """The typed decoder alone, without read_view's fallback to the full parse."""

    def read(body: bytes) -> dict:
        return msgspec.to_builtins(protocol.view.decode(body))

    return read


def assert_same_decision(protocol, endpoint, body: bytes, headers=()) -> tuple[object, bool]:
    """The decision, and whether the typed view itself took the body (else: the fallback)."""
    headers = list(headers)
    by_parse = decided(protocol, endpoint, parse_json_object, body, headers)
    try:
        typed_view(protocol)(body)
    except msgspec.DecodeError:
        # The view refuses this shape: reading must then be the full parse, nothing else.
        assert decided(protocol, endpoint, protocol.read, body, headers) == by_parse
        return by_parse, False
    assert decided(protocol, endpoint, typed_view(protocol), body, headers) == by_parse
    assert decided(protocol, endpoint, protocol.read, body, headers) == by_parse
    return by_parse, True


CAPTURED = sorted(p.name for p in SAMPLES.glob("*_request.json"))


@pytest.mark.parametrize("name", CAPTURED)
def test_every_captured_request_reads_the_same_through_the_view(name):
    captured = captured_request(name)
    protocol, endpoint = ENDPOINTS[captured["path"]]
    body = json.dumps(captured["body"]).encode()
    info, typed = assert_same_decision(protocol, endpoint, body, asgi_headers(captured))
    assert not isinstance(info, tuple), info  # a real request is never refused as malformed
    assert typed  # real requests take the fast path
    view = protocol.read(body)
    assert "messages" not in view and "system" not in view and "instructions" not in view


def test_the_captured_set_covers_both_clients():
    assert any(n.startswith("claude_") for n in CAPTURED)
    assert any(n.startswith("codex_") for n in CAPTURED)


ODD_BODIES = [
    b"",
    b"not json",
    b"[1, 2]",
    b'"model"',
    b'{"model": "m"',
    b'{"model": null}',
    b'{"model": 5}',
    b'{"model": "m", "stream": "yes"}',
    b'{"model": "m", "stream": null, "max_tokens": null}',
    b'{"model": "m", "max_tokens": -1}',
    b'{"model": "m", "max_tokens": 1.5}',
    b'{"model": "m", "max_tokens": true}',
    b'{"model": "m", "max_output_tokens": 99999999999999999999}',
    b'{"model": "m", "max_tokens": 9223372036854775808}',
    b'{"model": "m", "max_tokens": 9223372036854775807}',
    b'{"model": "m", "model": "n"}',
    b'{"model": "m", "tools": null}',
    b'{"model": "m", "tools": "web_search"}',
    b'{"model": "m", "tools": [1, "x", null, {"type": 7}, {"type": null}]}',
    b'{"model": "m", "tools": [{"name": "Bash"}, {"type": "web_search_20250305"}]}',
    b'{"model": "m", "tools": [{"type": "web_search"}, {"type": "code_interpreter",'
    b' "container": {"type": "auto", "memory_limit": "4g"}}]}',
    b'{"model": "m", "tools": [{"type": "code_interpreter", "container": "cntr_1"}]}',
    b'{"model": "m", "mcp_servers": [{"url": "https://mcp.example"}]}',
    b'{"model": "m", "tools": [{"type": "web_search_20250305", "max_uses": 3}]}',
    b'{"model": "m", "tools": [{"type": "web_search_20250305", "max_uses": "3"}]}',
    b'{"model": "m", "tools": [{"type": "web_fetch_20250910", "max_uses": true}]}',
    b'{"model": "m", "tools": [{"type": "web_search_20250305", "max_uses": -1}]}',
    b'{"model": "m", "tools": [{"type": "web_search_20250305", "max_uses": 2.5}]}',
    b'{"model": "m", "input": "hello"}',
    b'{"model": "m", "input": {"type": "compaction_trigger"}}',
    b'{"model": "m", "input": [{"role": "user"}, {"type": "compaction_trigger"}]}',
    b'{"model": "m", "input": [{"type": "compaction_trigger"}, "text"]}',
    b'{"model": "m", "input": []}',
    b'{"model": "m", "background": true, "tool_choice": {"type": "web_search"}}',
    b'{"model": "m", "background": "true", "tool_choice": "required"}',
    b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}}',
    b'{"model": "m", "stream": true, "stream_options": null}',
    b'{"model": "m", "max_completion_tokens": 10, "max_tokens": 20}',
    b'{"model": "m", "messages": [{"role": "system", "content": "x"}], "beta": {"x": [1]}}',
    '{"model": "claude-\u00e9", "system": "\u2603"}'.encode(),
]


@pytest.mark.parametrize("body", ODD_BODIES)
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_odd_bodies_get_the_decision_the_full_parse_gives(path, body):
    protocol, endpoint = ENDPOINTS[path]
    headers = [(b"x-codex-turn-metadata", b'{"request_kind": "compaction"}')]
    assert_same_decision(protocol, endpoint, body)
    assert_same_decision(protocol, endpoint, body, headers)


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_most_odd_bodies_are_compared_on_the_typed_view_itself(path):
    """Bodies the view refuses only exercise the fallback; make sure they are the few."""
    protocol, endpoint = ENDPOINTS[path]
    typed = [assert_same_decision(protocol, endpoint, body)[1] for body in ODD_BODIES]
    assert sum(typed) >= len(ODD_BODIES) * 2 // 3, sum(typed)


def test_a_body_is_forwarded_unchanged_unless_the_gateway_must_rewrite_it():
    body = {"model": "gpt-5.5", "input": "hi", "tools": [{"type": "web_search"}]}
    info = openai.PROTOCOL.inspect(openai.RESPONSES, openai.PROTOCOL.read(orjson.dumps(body)), [])
    assert not openai.PROTOCOL.rewrites(openai.RESPONSES, info)
    info.removed_tools = ["web_search"]
    assert openai.PROTOCOL.rewrites(openai.RESPONSES, info)
    chat = {"model": "gpt-5.5", "messages": [], "stream": True}
    info = openai.PROTOCOL.inspect(openai.CHAT, openai.PROTOCOL.read(orjson.dumps(chat)), [])
    assert openai.PROTOCOL.rewrites(openai.CHAT, info)
    data = dict(chat)
    openai.PROTOCOL.rewrite(openai.CHAT, data, info)
    assert data["stream_options"] == {"include_usage": True}
