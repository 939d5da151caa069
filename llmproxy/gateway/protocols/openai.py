"""The OpenAI Responses API (Codex) and Chat Completions (other OpenAI clients)."""

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

# (type, code) by error kind; OpenAI's own 401 is an invalid_request_error/invalid_api_key.
ERRORS = {
    ErrorKind.INVALID_REQUEST: ("invalid_request_error", None),
    ErrorKind.AUTHENTICATION: ("invalid_request_error", "invalid_api_key"),
    ErrorKind.PERMISSION: ("permission_error", "permission_denied"),
    ErrorKind.NOT_FOUND: ("invalid_request_error", "model_not_found"),
    ErrorKind.METHOD_NOT_ALLOWED: ("invalid_request_error", "method_not_allowed"),
    ErrorKind.REQUEST_TIMEOUT: ("invalid_request_error", "request_timeout"),
    ErrorKind.REQUEST_TOO_LARGE: ("invalid_request_error", "request_too_large"),
    ErrorKind.HEADERS_TOO_LARGE: ("invalid_request_error", "request_header_fields_too_large"),
    ErrorKind.BILLING: ("insufficient_quota", "insufficient_quota"),
    ErrorKind.RATE_LIMIT: ("requests", "rate_limit_exceeded"),
    ErrorKind.UPSTREAM_CREDENTIAL: ("server_error", "upstream_credential_rejected"),
    ErrorKind.UPSTREAM_UNAVAILABLE: ("server_error", "upstream_unavailable"),
    ErrorKind.UPSTREAM_TIMEOUT: ("server_error", "upstream_timeout"),
    ErrorKind.UPSTREAM_BUSY: ("server_error", "service_unavailable"),
    ErrorKind.UPSTREAM_OVERLOADED: ("server_error", "service_unavailable"),
    ErrorKind.OVERLOADED: ("server_error", "server_overloaded"),
    ErrorKind.DRAINING: ("server_error", "service_unavailable"),
    ErrorKind.INTERNAL: ("server_error", None),
}

# Tools that run at OpenAI and cost money; every other tool type (function, custom,
# namespace, tool_search, local_shell, shell, apply_patch, future ones) runs at the client.
HOSTED_TOOL_PREFIXES = (
    "web_search",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use",
    "mcp",
)

# Output items that record a hosted tool call, and the tool they are billed as.
CALL_ITEMS = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "image_generation_call": "image_generation",
    "computer_call": "computer_use",
    "mcp_call": "mcp",
}

RESPONSES = Endpoint("/v1/responses")
COMPACT = Endpoint("/v1/responses/compact", kind="compaction")
CHAT = Endpoint("/v1/chat/completions")


class _ToolView(msgspec.Struct):
    type: Any = UNSET
    container: Any = UNSET


class _ItemView(msgspec.Struct):
    type: Any = UNSET


class _RequestView(msgspec.Struct):
    """What ``OpenAI.inspect`` reads from a Responses or chat request; the rest is skipped."""

    model: Any = UNSET
    stream: Any = UNSET
    max_output_tokens: Any = UNSET
    max_completion_tokens: Any = UNSET
    max_tokens: Any = UNSET
    tools: list[_ToolView] | None = UNSET
    input: list[_ItemView] | str | None = UNSET
    background: Any = UNSET
    stream_options: Any = UNSET
    tool_choice: Any = UNSET
    previous_response_id: Any = UNSET
    conversation: Any = UNSET
    prompt: Any = UNSET


def hosted_tools(data: dict) -> tuple[list[str], str]:
    """Hosted tool types in the request, and the code interpreter's memory size."""
    found, memory = [], "1g"
    tools = data.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind.startswith(HOSTED_TOOL_PREFIXES):
            found.append(kind)
            container = tool.get("container")
            if kind == "code_interpreter" and isinstance(container, dict):
                memory = str(container.get("memory_limit") or memory)
    return found, memory


def is_compaction(data: dict, headers: Headers) -> bool:
    items = data.get("input")
    if isinstance(items, list) and items:
        last = items[-1]
        if isinstance(last, dict) and last.get("type") == "compaction_trigger":
            return True
    for name, value in headers:
        if name == b"x-codex-turn-metadata" and b'"request_kind":"compaction"' in value.replace(
            b" ", b""
        ):
            return True
    return False


def forced_tool(data: dict) -> str | None:
    choice = data.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    return kind if isinstance(kind, str) and kind.startswith(HOSTED_TOOL_PREFIXES) else None


def wants_usage(data: dict) -> bool:
    options = data.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def header_value(headers: Headers, name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")[:100]
    return ""


def read_response_usage(tap: ResponsesTap | JsonBodyTap, response: dict) -> None:
    """Usage and hosted tool calls from a Responses ``response`` object."""
    if isinstance(response.get("model"), str):
        tap.upstream_model = response["model"]
    if isinstance(response.get("id"), str):
        tap.response_id = response["id"][:200]
    usage = response.get("usage")
    if isinstance(usage, dict):
        read_usage(tap, usage, "input_tokens", "output_tokens")
    error = response.get("error")
    if isinstance(error, dict) and error.get("message"):
        tap.error = str(error["message"])[:500]
    output = response.get("output")
    if isinstance(output, list):
        count_calls(tap, output)


def count_calls(tap: Tap, output: list) -> None:
    containers: set = set()
    for index, item in enumerate(output):
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(kind, str):
            continue
        if kind in CALL_ITEMS:
            tap.usage.add_tool_calls(CALL_ITEMS[kind], 1)
        elif kind == "code_interpreter_call":
            container = item.get("container_id") or item.get("id")
            # An id that is not text still names one container: count it as its own.
            containers.add(container if isinstance(container, str) else ("item", index))
    if containers:
        memory = getattr(tap, "container_memory", "1g")
        tap.usage.containers[memory] = tap.usage.containers.get(memory, 0) + len(containers)


def read_response_body(tap: JsonBodyTap, body: dict) -> None:
    error = body.get("error")
    if isinstance(error, dict) and "usage" not in body:
        tap.error = str(error.get("message", ""))[:500]
        return
    read_response_usage(tap, body)


class ResponsesTap(Tap):
    # Only the terminal events carry usage and the finished output items.
    _WANTED = (b"response.completed", b"response.incomplete", b"response.failed", b"error")

    def __init__(self, container_memory: str = "1g") -> None:
        super().__init__()
        self._events = SSESplitter()
        self.container_memory = container_memory

    def feed(self, chunk: bytes) -> None:
        for event, data in self._events.feed(chunk):
            if event.endswith(b".delta"):  # output text, reasoning, tool arguments
                self.content_bytes += string_length(data, b'"delta":"')
            elif event in self._WANTED:
                self.read_event(data)
                self.final = event != b"error"

    def read_event(self, data: bytes) -> None:
        """One SSE event's JSON."""
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(payload, dict):
            self.read_payload(payload)

    def read_payload(self, payload: dict) -> None:
        """One terminal event, parsed (an SSE event's JSON, or a websocket frame)."""
        response = payload.get("response")
        if isinstance(response, dict):
            read_response_usage(self, response)
        elif payload.get("type") == "error":
            error = payload.get("error") if isinstance(payload.get("error"), dict) else payload
            self.error = str(error.get("message", "error"))[:500]


# Events after which a Responses websocket has finished one response.create.
FINISHED = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})


class FrameTap(ResponsesTap):
    """The Responses events as websocket frames: one JSON text per event."""

    def __init__(self, container_memory: str = "1g") -> None:
        super().__init__(container_memory)
        self.ended = False  # the response's last frame (a terminal event or an error) went by

    def feed(self, frame: str) -> None:
        if '.delta"' in frame[:120]:  # most frames: content, counted without parsing
            self.content_bytes += string_length(frame.encode(), b'"delta":"')
            return
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict) and event.get("type") in FINISHED:
            self.ended = True
            self.final = event.get("type") != "error"
            self.read_payload(event)


def read_usage(tap: Tap, usage: dict[str, Any], inputs: str, outputs: str) -> None:
    """OpenAI usage, named ``input_tokens``/``output_tokens`` by Responses and
    ``prompt_tokens``/``completion_tokens`` by Chat Completions. OpenAI's input count includes
    the cached tokens; ours does not (as Anthropic's), so they are taken out."""
    target = tap.usage
    target.reported = True
    details = usage.get(f"{inputs}_details") or {}
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    target.input_tokens = max(0, count(usage.get(inputs)) - cached)
    target.cache_read_tokens = cached
    target.output_tokens = count(usage.get(outputs))
    out_details = usage.get(f"{outputs}_details") or {}
    if isinstance(out_details, dict):
        target.reasoning_tokens = count(out_details.get("reasoning_tokens"))


def read_chat_usage(tap: Tap, usage: dict[str, Any]) -> None:
    read_usage(tap, usage, "prompt_tokens", "completion_tokens")


def read_chat_body(tap: JsonBodyTap, body: dict) -> None:
    if isinstance(body.get("model"), str):
        tap.upstream_model = body["model"]
    if isinstance(body.get("usage"), dict):
        read_chat_usage(tap, body["usage"])
    elif isinstance(body.get("error"), dict):
        tap.error = str(body["error"].get("message", ""))[:500]


# Where a chat chunk carries generated content: text, tool arguments, reasoning.
_CHAT_CONTENT = (b'"content":"', b'"arguments":"', b'"reasoning_content":"')


class ChatStreamTap(Tap):
    """Chat chunks have no event names; only the one with a usage object is parsed.

    When the gateway added ``stream_options.include_usage`` itself, the usage-only chunk it
    asked for is read and then dropped, so the client gets the stream it requested.
    """

    def __init__(self, strip_usage_chunk: bool = False) -> None:
        super().__init__()
        self._events = SSESplitter()
        self.rewrites = strip_usage_chunk
        self._kept: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        for _event, data in self._events.feed(chunk):
            if data == b"[DONE]":
                self.final = True
            for marker in _CHAT_CONTENT:
                self.content_bytes += string_length(data, marker)
            payload = self.read_chunk(data) if b'"usage"' in data else None
            if self.rewrites and not (payload is not None and payload.get("choices") == []):
                self._kept.append(b"data: " + data + b"\n\n")

    def rewrite(self, chunk: bytes) -> bytes:
        kept, self._kept = b"".join(self._kept), []
        return kept

    def read_chunk(self, data: bytes) -> dict | None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if isinstance(payload, dict):
            if isinstance(payload.get("model"), str):
                self.upstream_model = payload["model"]
            if isinstance(payload.get("usage"), dict):
                read_chat_usage(self, payload["usage"])
                self.final = True  # the usage chunk comes last, just before [DONE]
            return payload
        return None


class OpenAI(Protocol):
    name = "openai"
    provider_kind = "openai"
    # Codex sends {"type": "web_search"} with every request; a key without web search
    # should still work, without it, unless tool_choice insists on the tool.
    removes_refused_tools = True
    request_headers = frozenset(
        {
            b"content-type",
            b"accept",
            b"user-agent",
            b"openai-beta",
            b"originator",
            b"version",
            b"session-id",
            b"session_id",
            b"thread-id",
            b"conversation_id",
            b"x-client-request-id",
        }
    )
    request_header_prefixes = (b"x-codex-", b"x-stainless-")
    # Not openai-organization / openai-project: they name the gateway's provider account.
    response_headers = frozenset(
        {
            b"content-type",
            b"x-request-id",
            b"retry-after",
            b"openai-processing-ms",
            b"openai-version",
            b"openai-model",
        }
    )
    response_header_prefixes = (b"x-ratelimit-", b"x-codex-")
    view = msgspec.json.Decoder(_RequestView)
    # Inputs the provider holds or fetches: files by id or URL, images by URL (an image
    # sent inline is a data: URL, in the body already).
    held_markers = (b'"file_id"', b'"file_url"', b'"image_url":"http', b'"image_url": "http')

    def inspect(self, endpoint: Endpoint, data: dict, headers: Headers) -> RequestInfo:
        model = require_model(data)
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise ProxyError(ErrorKind.INVALID_REQUEST, "stream: expected true or false.")
        tools, memory = hosted_tools(data)
        if endpoint is CHAT:
            limit = optional_int(data, "max_completion_tokens")
            if limit is None:
                limit = optional_int(data, "max_tokens")
        else:
            limit = optional_int(data, "max_output_tokens")
        kind = endpoint.kind
        if kind == "turn" and is_compaction(data, headers):
            kind = "compaction"
        previous = data.get("previous_response_id")
        return RequestInfo(
            model=model,
            stream=stream,
            max_output_tokens=limit,
            hosted_tools=tools,
            kind=kind,
            session_id=header_value(headers, b"session-id") or header_value(headers, b"session_id"),
            agent_id=header_value(headers, b"thread-id"),
            container_memory=memory,
            background=data.get("background") is True,
            include_usage=wants_usage(data),
            forced_tool=forced_tool(data),
            previous_response_id=previous if isinstance(previous, str) else "",
            # A stored conversation or prompt template is context the provider holds.
            held_references=sum(bool(data.get(name)) for name in ("conversation", "prompt")),
        )

    def rewrites(self, endpoint: Endpoint, info: RequestInfo) -> bool:
        return bool(info.removed_tools) or (
            endpoint is CHAT and info.stream and not info.include_usage
        )

    def rewrite(self, endpoint: Endpoint, data: dict, info: RequestInfo) -> None:
        if info.removed_tools:
            refused = set(info.removed_tools)
            data["tools"] = [
                t
                for t in data["tools"]
                if not (
                    isinstance(t, dict) and isinstance(t.get("type"), str) and t["type"] in refused
                )
            ]
        if endpoint is CHAT and info.stream and not info.include_usage:
            # Ask for usage so the call can be priced; ChatStreamTap drops the extra chunk.
            options = data.get("stream_options")
            data["stream_options"] = {**(options if isinstance(options, dict) else {})}
            data["stream_options"]["include_usage"] = True

    def tap(self, streaming: bool, info: RequestInfo, endpoint: Endpoint) -> Tap:
        if endpoint is CHAT:
            if streaming:
                return ChatStreamTap(strip_usage_chunk=info.stream and not info.include_usage)
            return JsonBodyTap(read_chat_body)
        if streaming:
            return ResponsesTap(info.container_memory)
        tap = JsonBodyTap(read_response_body)
        tap.container_memory = info.container_memory
        return tap

    def error_status(self, error: ProxyError) -> int:
        # OpenAI clients know insufficient_quota as a 429 they must not retry, and have no
        # 529: an overloaded provider is a 503 to them.
        if error.kind is ErrorKind.BILLING:
            return 429
        if error.kind is ErrorKind.UPSTREAM_OVERLOADED:
            return 503
        return error.kind.status

    def error_object(self, error: ProxyError) -> dict:
        kind, code = ERRORS[error.kind]
        return {"message": error.message, "type": kind, "param": None, "code": code}

    def error_body(self, error: ProxyError) -> bytes:
        return orjson.dumps({"error": self.error_object(error)})

    def stream_error_event(self, message: str) -> bytes:
        body = {
            "type": "error",
            "error": {"type": "server_error", "code": "upstream_error", "message": message},
        }
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"

    def models_body(self, model_ids: list[str]) -> bytes:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "llmproxy"} for m in model_ids
        ]
        return orjson.dumps({"object": "list", "data": data})


PROTOCOL = OpenAI()
