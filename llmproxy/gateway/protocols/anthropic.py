"""The Anthropic Messages API as Claude Code and the SDKs speak it."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.protocols.base import (
    UNSET,
    Endpoint,
    Headers,
    JsonBodyTap,
    Protocol,
    RequestInfo,
    Tap,
    count,
    optional_int,
    require_model,
    string_length,
)
from llmproxy.gateway.protocols.sse import SSESplitter

ERROR_TYPES = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.METHOD_NOT_ALLOWED: "invalid_request_error",
    ErrorKind.REQUEST_TIMEOUT: "timeout_error",
    ErrorKind.REQUEST_TOO_LARGE: "request_too_large",
    ErrorKind.HEADERS_TOO_LARGE: "request_too_large",
    ErrorKind.BILLING: "billing_error",
    ErrorKind.RATE_LIMIT: "rate_limit_error",
    ErrorKind.UPSTREAM_CREDENTIAL: "api_error",
    ErrorKind.UPSTREAM_UNAVAILABLE: "api_error",
    ErrorKind.UPSTREAM_TIMEOUT: "timeout_error",
    ErrorKind.UPSTREAM_BUSY: "api_error",
    ErrorKind.UPSTREAM_OVERLOADED: "overloaded_error",
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.DRAINING: "api_error",
    ErrorKind.INTERNAL: "api_error",
}

# Tools with one of these types run on the client's machine; any other typed tool runs at
# Anthropic (web search, web fetch, code execution, ...) and needs the key's permission.
CLIENT_TOOL_TYPES = ("custom", "bash_", "text_editor_", "computer_", "memory_")

MESSAGES = Endpoint("/v1/messages")
COUNT_TOKENS = Endpoint("/v1/messages/count_tokens", kind="count", billed=False)


class _ToolView(msgspec.Struct):
    type: Any = UNSET
    max_uses: Any = UNSET


class _RequestView(msgspec.Struct):
    """What ``Anthropic.inspect`` reads from a Messages request; the rest is skipped."""

    model: Any = UNSET
    stream: Any = UNSET
    max_tokens: Any = UNSET
    tools: list[_ToolView] | None = UNSET
    mcp_servers: Any = UNSET


def hosted_tools(data: dict) -> tuple[list[str], dict[str, int]]:
    """Hosted tool types in the request, and the ``max_uses`` of those that set one."""
    found, limits = [], {}
    tools = data.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind and not kind.startswith(CLIENT_TOOL_TYPES):
            found.append(kind)
            uses = tool.get("max_uses")
            if isinstance(uses, int) and not isinstance(uses, bool):
                limits[kind] = max(0, uses)
    if data.get("mcp_servers"):
        found.append("mcp")
    return found, limits


def header_text(headers: Headers, name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")[:100]
    return ""


def session_id(data: dict, headers: Headers) -> str:
    return header_text(headers, b"x-claude-code-session-id")


def read_usage(tap: Tap, usage: dict[str, Any]) -> None:
    """Fold one usage object (message_start, message_delta or a whole message) into the tap.

    Counts in message_delta are cumulative, so a later value replaces an earlier one.
    """
    target = tap.usage
    target.reported = True
    if "input_tokens" in usage:
        target.input_tokens = count(usage["input_tokens"])
    if "output_tokens" in usage:
        target.output_tokens = count(usage["output_tokens"])
    if "cache_read_input_tokens" in usage:
        target.cache_read_tokens = count(usage["cache_read_input_tokens"])
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        target.cache_write_5m_tokens = count(split.get("ephemeral_5m_input_tokens"))
        target.cache_write_1h_tokens = count(split.get("ephemeral_1h_input_tokens"))
    elif "cache_creation_input_tokens" in usage:
        # No split reported: Anthropic's default cache lifetime is 5 minutes.
        target.cache_write_5m_tokens = count(usage["cache_creation_input_tokens"])
        target.cache_write_1h_tokens = 0
    server_tools = usage.get("server_tool_use")
    if isinstance(server_tools, dict):
        for name, value in server_tools.items():
            # "web_search_requests": 2 → 2 calls of "web_search"
            target.tool_calls[name.removesuffix("_requests")] = count(value)


def read_message(tap: Tap, body: dict) -> None:
    if body.get("type") == "error":
        error = body.get("error")
        tap.error = str(error.get("message", ""))[:500] if isinstance(error, dict) else "error"
        return
    if isinstance(body.get("model"), str):
        tap.upstream_model = body["model"]
    usage = body.get("usage")
    if isinstance(usage, dict):
        read_usage(tap, usage)


# Where a content_block_delta carries generated content: text, tool input, thinking.
_CONTENT = (b'"text":"', b'"partial_json":"', b'"thinking":"')


def content_length(data: bytes) -> int:
    for marker in _CONTENT:
        length = string_length(data, marker)
        if length:
            return length
    return 0


class AnthropicStreamTap(Tap):
    # Only these events carry usage; text and tool deltas are skipped without parsing.
    _WANTED = (b"message_start", b"message_delta", b"error")
    # After these the usage is final (message_delta carries the cumulative output count).
    _LAST = (b"message_delta", b"message_stop")

    def __init__(self) -> None:
        super().__init__()
        self._events = SSESplitter()

    def feed(self, chunk: bytes) -> None:
        for event, data in self._events.feed(chunk):
            if event == b"content_block_delta":
                self.content_bytes += content_length(data)
            elif event in self._WANTED:
                self._read(event, data)
            if event in self._LAST:
                self.final = True

    def _read(self, event: bytes, data: bytes) -> None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(payload, dict):
            return
        if event == b"message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                read_message(self, message)
        elif event == b"message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                read_usage(self, usage)
        else:
            read_message(self, payload)


class Anthropic(Protocol):
    name = "anthropic"
    provider_kind = "anthropic"
    request_headers = frozenset(
        {
            b"anthropic-version",
            b"anthropic-beta",
            b"user-agent",
            b"content-type",
            b"accept",
            b"x-app",
            b"x-claude-code-session-id",
            b"x-claude-code-agent-id",
            b"anthropic-dangerous-direct-browser-access",
        }
    )
    request_header_prefixes = (b"x-stainless-",)
    response_headers = frozenset(
        {b"content-type", b"request-id", b"x-request-id", b"retry-after", b"x-should-retry"}
    )
    response_header_prefixes = (b"anthropic-ratelimit-", b"x-ratelimit-")
    view = msgspec.json.Decoder(_RequestView)
    # Document and image sources the provider fetches or holds: {"type": "url", ...},
    # {"type": "file", "file_id": ...}.
    held_markers = (b'"file_id"', b'"type":"url"', b'"type": "url"')

    def inspect(self, endpoint: Endpoint, data: dict, headers: Headers) -> RequestInfo:
        model = require_model(data)
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise ProxyError(ErrorKind.INVALID_REQUEST, "stream: expected true or false.")
        tools, limits = hosted_tools(data)
        return RequestInfo(
            model=model,
            stream=stream,
            max_output_tokens=optional_int(data, "max_tokens"),
            hosted_tools=tools,
            hosted_tool_limits=limits,
            kind=endpoint.kind,
            session_id=session_id(data, headers),
            agent_id=header_text(headers, b"x-claude-code-agent-id"),
        )

    def tap(self, streaming: bool, info: RequestInfo | None = None, endpoint=None) -> Tap:
        return AnthropicStreamTap() if streaming else JsonBodyTap(read_message)

    def default_headers(self) -> Headers:
        return [(b"anthropic-version", b"2023-06-01")]

    def error_body(self, error: ProxyError) -> bytes:
        return orjson.dumps(
            {"type": "error", "error": {"type": ERROR_TYPES[error.kind], "message": error.message}}
        )

    def stream_error_event(self, message: str) -> bytes:
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"

    def models_body(self, model_ids: list[str]) -> bytes:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
            for m in model_ids
        ]
        return orjson.dumps(
            {
                "data": data,
                "has_more": False,
                "first_id": model_ids[0] if model_ids else None,
                "last_id": model_ids[-1] if model_ids else None,
            }
        )


PROTOCOL = Anthropic()
