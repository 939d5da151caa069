"""What the pipeline needs from a wire protocol, and the pieces both protocols share."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from billing.usage import Usage
from llmproxy.gateway.errors import ErrorKind, ProxyError

Headers = list[tuple[bytes, bytes]]

# Non-stream and error bodies are parsed for usage up to this size; bigger ones still pass.
MAX_TAPPED_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    """One proxied path: how to read it and whether it costs money."""

    upstream_path: str
    kind: str = "turn"  # the UsageEvent kind
    billed: bool = True
    needs_model: bool = True


@dataclass
class RequestInfo:
    """What the gateway reads from a request body; everything else passes untouched."""

    model: str
    stream: bool
    max_output_tokens: int | None = None
    hosted_tools: list[str] = field(default_factory=list)
    # The most calls the request allows each hosted tool (Anthropic's max_uses), where given.
    hosted_tool_limits: dict[str, int] = field(default_factory=dict)
    kind: str = "turn"
    session_id: str = ""
    agent_id: str = ""  # a subagent (Claude Code) or thread (Codex) within the session
    container_memory: str = "1g"  # OpenAI code interpreter containers are priced by size
    background: bool = False
    include_usage: bool = False  # a chat completions client asked for the usage chunk
    forced_tool: str | None = None  # the hosted tool tool_choice insists on, if any
    removed_tools: list[str] = field(default_factory=list)  # refused hosted tools taken out
    # Context the provider holds for this request beyond its body (gateway/context.py):
    # the response it continues, and how many stored things (conversation, prompt template,
    # file, URL) it names. ``held_prompt_tokens`` is what admission reserves for them.
    previous_response_id: str = ""
    held_references: int = 0
    held_prompt_tokens: int = 0


class Tap:
    """Sees the relayed chunks on the side and collects usage.

    A tap never changes a byte, except where the gateway itself changed the request and must
    undo that in the answer (``rewrites``): then ``rewrite`` returns what the client gets.
    """

    rewrites = False

    def rewrite(self, chunk: bytes) -> bytes:
        return chunk

    def __init__(self) -> None:
        self.usage = Usage()
        self.error = ""
        self.upstream_model = ""
        self.response_id = ""  # the provider's id for the answer, where it gives one
        # The answer's last event went by: its usage is final, whatever follows. The relay
        # settles right then, before that event reaches the client.
        self.final = False
        # Bytes of generated content seen (text, thinking, tool arguments): what an
        # abandoned call's output is estimated from when its usage never arrived.
        self.content_bytes = 0

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the last chunk (or on disconnect)."""

    def estimate(self, prompt_tokens: int) -> None:
        """Fill in what the provider never reported, for a call given up before its usage
        event: input from the start event if there was one, else ``prompt_tokens`` (the
        reservation's estimate); output at least one token per ``BYTES_PER_TOKEN`` bytes
        of content seen. Marks the usage as estimated."""
        usage = self.usage
        if not usage.prompt_tokens:
            usage.input_tokens = prompt_tokens
        usage.output_tokens = max(usage.output_tokens, -(-self.content_bytes // BYTES_PER_TOKEN))
        usage.estimated = True


# Output is estimated at one token per 3 bytes of UTF-8 content: tokenizers average about 4
# for English and code, so this over-counts them; text of 1-2 byte characters per token
# (CJK) comes out close (docs/operations.md).
BYTES_PER_TOKEN = 3


def string_length(data: bytes | str, marker: bytes | str) -> int:
    """The length of the JSON string value that follows ``marker`` (``"text":"``) in an
    event, as it is written (escapes count as written); 0 when there is none. Cheaper than
    parsing the event: content deltas are most of a stream's events."""
    start = data.find(marker)
    if start < 0:
        return 0
    start += len(marker)
    end = data.find(marker[-1:], start)  # the closing quote: the marker ends with one
    while end > 0:
        slashes = 0
        while data[end - 1 - slashes : end - slashes] in (b"\\", "\\"):
            slashes += 1
        if slashes % 2 == 0:
            return end - start
        end = data.find(marker[-1:], end + 1)
    return len(data) - start  # cut off mid-string: all of it


class JsonBodyTap(Tap):
    """For non-streamed answers: keep the body, parse it once at the end."""

    def __init__(self, read_usage) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._size = 0
        self._read_usage = read_usage

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        # Cut off mid-body, the whole document read so far counts as content (an over-count).
        self.content_bytes = self._size
        if self._size <= MAX_TAPPED_BODY:
            self._parts.append(chunk)

    def finish(self) -> None:
        if not self._parts or self._size > MAX_TAPPED_BODY:
            return
        try:
            body = orjson.loads(b"".join(self._parts))
        except orjson.JSONDecodeError:
            self.error = "upstream answered with a body that is not JSON"
            return
        if isinstance(body, dict):
            self._read_usage(self, body)
            self.final = True


# A field the request view leaves out when the body does not have it, so the view reads like
# the parsed body: ``view.get(name)`` is None for a missing field either way.
UNSET: Any = msgspec.UNSET


def read_view(decoder: msgspec.json.Decoder | None, body: bytes) -> dict[str, Any]:
    """The request fields the gateway reads, without building the rest of the body.

    A Claude Code request is ~80 KB of messages, system prompt and tool descriptions that the
    gateway forwards untouched; a typed decoder skips them without making Python objects
    (~5x faster than parsing it all). Anything the view cannot take as declared (an odd
    shape, bad JSON) goes through the full parse, which keeps its exact errors and leniency.
    """
    if decoder is not None and body:
        try:
            return msgspec.to_builtins(decoder.decode(body))
        except msgspec.DecodeError:  # ValidationError included
            pass
        except RecursionError:
            raise too_deep() from None
    return parse_json_object(body)


MAX_DEPTH = 1000  # nesting the JSON decoders take; deeper bodies are refused


def too_deep() -> ProxyError:
    return ProxyError(
        ErrorKind.INVALID_REQUEST,
        f"The request body nests deeper than {MAX_DEPTH} levels; no API accepts that.",
    )


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise ProxyError(
            ErrorKind.INVALID_REQUEST, "The request body is empty; send a JSON object."
        )
    try:
        data = orjson.loads(body)
    except RecursionError:
        raise too_deep() from None
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise too_deep() from None
        raise ProxyError(
            ErrorKind.INVALID_REQUEST, f"The request body is not valid JSON: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ProxyError(ErrorKind.INVALID_REQUEST, "The request body must be a JSON object.")
    return data


def dump_json(data: Any) -> bytes:
    """Serialize a client's (rewritten) body. orjson stops at 254 levels of nesting, fewer
    than the decoders take: deeper bodies go through the standard library instead."""
    try:
        return orjson.dumps(data)
    except TypeError:
        try:
            return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        except (RecursionError, ValueError, TypeError):
            raise too_deep() from None


def require_model(data: dict) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError(ErrorKind.INVALID_REQUEST, "model: a model name (string) is required.")
    return model


def optional_int(data: dict, name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProxyError(ErrorKind.INVALID_REQUEST, f"{name}: expected a non-negative integer.")
    return value


def count(value: Any) -> int:
    """A token count from upstream JSON; anything odd counts as zero rather than crashing."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@functools.cache
def _marker_pattern(markers: tuple[bytes, ...]) -> re.Pattern[bytes]:
    return re.compile(b"|".join(re.escape(marker) for marker in markers))


class Protocol:
    """Per-protocol rules. Subclasses fill in the names and the three readers."""

    # Refused hosted tools: take them out of the request (True) or refuse it (False).
    removes_refused_tools = False

    name: str
    provider_kind: str
    request_headers: frozenset[bytes]
    request_header_prefixes: tuple[bytes, ...]
    response_headers: frozenset[bytes]
    response_header_prefixes: tuple[bytes, ...]

    def inspect(self, endpoint: Endpoint, data: dict, headers: Headers) -> RequestInfo:
        raise NotImplementedError

    def tap(self, streaming: bool, info: RequestInfo, endpoint: Endpoint) -> Tap:
        raise NotImplementedError

    def default_headers(self) -> Headers:
        """Headers the upstream needs when the client did not send them."""
        return []

    # Decodes the fields ``inspect`` reads (see ``read_view``); None: parse the whole body.
    view: msgspec.json.Decoder | None = None

    def read(self, body: bytes) -> dict[str, Any]:
        return read_view(self.view, body)

    # Byte patterns in a request body that name something the provider stores (a file by
    # id, a URL it fetches): found without parsing the body, each one is reserved for.
    held_markers: tuple[bytes, ...] = ()

    def held_references(self, body: bytes) -> int:
        # One pass over the body for all markers (a count per marker is a pass each: about
        # 35 µs apiece over Claude Code's 78 KB requests).
        if not self.held_markers:
            return 0
        return sum(1 for _ in _marker_pattern(self.held_markers).finditer(body))

    def rewrites(self, endpoint: Endpoint, info: RequestInfo) -> bool:
        """Will ``rewrite`` change this request's body? Only then is the body parsed whole."""
        return False

    def rewrite(self, endpoint: Endpoint, data: dict, info: RequestInfo) -> None:
        """Change the request body the gateway forwards (the whole parsed body, in place)."""

    def error_body(self, error: ProxyError) -> bytes:
        raise NotImplementedError

    def error_status(self, error: ProxyError) -> int:
        return error.status or error.kind.status

    def stream_error_event(self, message: str) -> bytes:
        raise NotImplementedError

    def models_body(self, model_ids: list[str]) -> bytes:
        raise NotImplementedError
