"""The usage taps read real streams, split anywhere, without changing a byte."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmproxy.gateway.errors import ProxyError
from llmproxy.gateway.protocols import anthropic, sse
from llmproxy.gateway.protocols.sse import SSESplitter
from tests.samples import asgi_headers, captured_request
from tests.samples import sample_bytes as sample


def chunked(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    parts, start = [], 0
    while start < len(data):
        end = start + rng.randint(1, 64)
        parts.append(data[start:end])
        start = end
    return parts


@pytest.mark.parametrize("seed", range(20))
def test_splitter_finds_every_event_however_the_bytes_are_cut(seed):
    stream = sample("fake_anthropic_tool_stream.sse")
    whole = list(SSESplitter().feed(stream))
    splitter = SSESplitter()
    pieces = [event for part in chunked(stream, seed) for event in splitter.feed(part)]
    assert pieces == whole
    assert [name for name, _ in whole][:1] == [b"message_start"]
    assert all(json.loads(data) for _, data in whole)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"event:", b"data:", b"event: ", b"data: ", b"id:", b":", b""]),
            st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_the_common_event_shape_is_read_as_any_event_is(lines):
    block = b"\n".join(field + value for field, value in lines)
    assert sse.parse_event(block) == sse.parse_lines(block)


def test_splitter_accepts_crlf_and_multiline_data():
    events = list(SSESplitter().feed(b"event: a\r\ndata: 1\r\ndata:2\r\n\r\ndata: x\n\n"))
    assert events == [(b"a", b"1\n2"), (b"", b"x")]


@pytest.mark.parametrize("seed", range(5))
def test_anthropic_stream_tap_reads_usage_from_the_sample(seed):
    tap = anthropic.PROTOCOL.tap(streaming=True)
    for part in chunked(sample("fake_anthropic_text_stream.sse"), seed):
        tap.feed(part)
    tap.finish()
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (24, 12)
    assert tap.usage.reported


def test_anthropic_tap_reads_cache_split_and_server_tools():
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-x",
            "usage": {
                "input_tokens": 5,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 30,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 10,
                    "ephemeral_1h_input_tokens": 20,
                },
                "output_tokens": 1,
            },
        },
    }
    delta = {
        "type": "message_delta",
        "usage": {"output_tokens": 77, "server_tool_use": {"web_search_requests": 2}},
    }
    stream = (
        f"event: message_start\ndata: {json.dumps(start)}\n\n"
        f"event: message_delta\ndata: {json.dumps(delta)}\n\n"
    ).encode()
    tap = anthropic.PROTOCOL.tap(streaming=True)
    tap.feed(stream)
    usage = tap.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (5, 77, 100)
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (10, 20)
    assert usage.tool_calls == {"web_search": 2}
    assert tap.upstream_model == "claude-x"


def test_non_stream_tap_reads_the_message_and_errors():
    tap = anthropic.PROTOCOL.tap(streaming=False)
    tap.feed(b'{"type":"message","model":"m","usage":{"input_tokens":3,')
    tap.feed(b'"output_tokens":4,"cache_creation_input_tokens":9}}')
    tap.finish()
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (3, 4)
    assert tap.usage.cache_write_5m_tokens == 9
    error = anthropic.PROTOCOL.tap(streaming=False)
    error.feed(b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}')
    error.finish()
    assert error.error == "busy" and not error.usage.reported


@pytest.mark.parametrize(
    "name",
    [
        "claude_p_messages_request.json",
        "claude_p_tool_followup_request.json",
        "claude_nonstream_fallback_request.json",
        "claude_title_request.json",
    ],
)
def test_real_claude_code_requests_pass_inspection(name):
    captured = captured_request(name)
    headers = asgi_headers(captured)
    info = anthropic.PROTOCOL.inspect(anthropic.MESSAGES, captured["body"], headers)
    assert info.model.startswith("claude-")
    assert info.session_id == dict(headers)[b"x-claude-code-session-id"].decode()
    assert info.hosted_tools == []  # Claude Code's 24 tools all run on the client
    assert info.max_output_tokens and info.max_output_tokens >= 32000


def test_hosted_tools_are_found_and_client_tools_are_not():
    body = {
        "model": "m",
        "tools": [
            {"name": "Bash", "input_schema": {}},
            {"type": "custom", "name": "x"},
            {"type": "bash_20250124", "name": "bash"},
            {"type": "web_search_20250305", "name": "web_search"},
            {"type": "code_execution_20250825", "name": "code_execution"},
        ],
        "mcp_servers": [{"type": "url", "url": "https://mcp.example"}],
    }
    info = anthropic.PROTOCOL.inspect(anthropic.MESSAGES, body, [])
    assert info.hosted_tools == ["web_search_20250305", "code_execution_20250825", "mcp"]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"model": 5},
        {"model": "m", "stream": "yes"},
        {"model": "m", "max_tokens": -1},
    ],
)
def test_malformed_fields_the_gateway_reads_are_400s(body):
    with pytest.raises(ProxyError) as raised:
        anthropic.PROTOCOL.inspect(anthropic.MESSAGES, body, [])
    assert raised.value.kind.status == 400
