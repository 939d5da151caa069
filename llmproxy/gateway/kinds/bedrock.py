"""AWS Bedrock for Claude: clients speak Anthropic Messages, the gateway calls InvokeModel.

The request: the Messages body without ``model`` and ``stream`` (the URL names the model
and the operation), with ``anthropic_version: bedrock-2023-05-31`` and the client's
``anthropic-beta`` header as ``anthropic_beta``, POSTed to
``{base}/model/{model id}/invoke`` or ``.../invoke-with-response-stream`` and signed with
SigV4 (botocore's signer; the provider's own keys, else the standard AWS sources).

The answer: InvokeModel's body is a Messages answer already. A stream comes as AWS's binary
event stream (application/vnd.amazon.eventstream), each ``chunk`` event a JSON object whose
``bytes`` field is one Messages stream event, base64-encoded: those bytes become one SSE
event (``event: <type>``, ``data: <the bytes as Bedrock sent them>``), which is what the
Anthropic API itself sends. An exception event becomes the protocol's ``error`` event.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Iterable
from urllib.parse import quote

import httpx
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer, ParserError
from botocore.session import get_session

from llmproxy.gateway import upstream
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.kinds.base import ClientRequest, Headers, Kind, UpstreamRequest
from llmproxy.gateway.policy import ProviderInfo

log = logging.getLogger(__name__)

SERVICE = "bedrock"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
EVENT_STREAM = "application/vnd.amazon.eventstream"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

# Bedrock's exception events, as the Anthropic error type the client knows.
STREAM_ERRORS = {
    "throttlingException": "overloaded_error",
    "serviceUnavailableException": "overloaded_error",
    "modelStreamErrorException": "api_error",
    "internalServerException": "api_error",
    "modelTimeoutException": "timeout_error",
    "validationException": "invalid_request_error",
}


def parse_credential(text: str) -> ReadOnlyCredentials | None:
    """The provider's own AWS keys: ``ACCESS_KEY_ID:SECRET[:SESSION_TOKEN]`` or a JSON
    object with ``access_key_id``, ``secret_access_key`` (and ``session_token``)."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("the Bedrock credential is not valid JSON") from None
        key, secret = data.get("access_key_id"), data.get("secret_access_key")
        token = data.get("session_token")
    else:
        key, _, rest = text.partition(":")
        secret, _, token = rest.partition(":")
    if not isinstance(key, str) or not isinstance(secret, str) or not key or not secret:
        raise ValueError(
            "the Bedrock credential needs an access key id and a secret access key "
            "(ACCESS_KEY_ID:SECRET_ACCESS_KEY, or JSON)"
        )
    return ReadOnlyCredentials(key, secret, token or None)


class AWSCredentials:
    """The credentials of one Bedrock provider: its own keys, else the standard AWS chain
    (environment, shared files, SSO, container and instance roles), resolved once per
    process and refreshed by botocore when they expire."""

    def __init__(self) -> None:
        self._chain: Credentials | None = None
        self._parsed: dict[str, ReadOnlyCredentials | None] = {}

    async def get(self, provider: ProviderInfo) -> ReadOnlyCredentials:
        own = self._own(provider.credential)
        if own is not None:
            return own
        chain = self._chain
        if chain is None or (isinstance(chain, RefreshableCredentials) and chain.refresh_needed()):
            # Resolving or refreshing may read files or call a metadata service: off the loop.
            chain = await asyncio.to_thread(self._resolve)
        if chain is None:
            raise ProxyError(
                ErrorKind.UPSTREAM_CREDENTIAL,
                f"Provider {provider.name!r} has no AWS credentials: none in its record and "
                "none from the standard AWS sources. An admin must add them.",
            )
        return chain.get_frozen_credentials()

    def _own(self, text: str) -> ReadOnlyCredentials | None:
        if text not in self._parsed:
            self._parsed = {text: parse_credential(text)}  # one provider's record at a time
        return self._parsed[text]

    def _resolve(self) -> Credentials | None:
        if self._chain is None:
            self._chain = get_session().get_credentials()
        if self._chain is not None:
            self._chain.get_frozen_credentials()  # refreshes here, in the thread
        return self._chain


def sign(
    credentials: ReadOnlyCredentials, region: str, method: str, url: str, headers: Headers,
    body: bytes,
) -> Headers:  # fmt: skip
    """The headers with SigV4's (x-amz-date, authorization, x-amz-security-token) added."""
    request = AWSRequest(
        method=method,
        url=url,
        data=body,
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
    )
    SigV4Auth(
        Credentials(credentials.access_key, credentials.secret_key, credentials.token),
        SERVICE,
        region,
    ).add_auth(request)
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]


def adapt_body(request: ClientRequest, betas: list[str]) -> bytes:
    """The Messages body as InvokeModel takes it (see the module's doc)."""
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise ProxyError(ErrorKind.INVALID_REQUEST, "The request body is not JSON.") from None
    if not isinstance(data, dict):
        raise ProxyError(ErrorKind.INVALID_REQUEST, "The request body is not a JSON object.")
    data.pop("model", None)
    data.pop("stream", None)
    data["anthropic_version"] = ANTHROPIC_VERSION
    if betas:
        data["anthropic_beta"] = betas
    return orjson.dumps(data)


def client_betas(headers: Headers, allowed: list[str] | None) -> list[str]:
    found = []
    for name, value in headers:
        if name == b"anthropic-beta":
            found += [b.strip() for b in value.decode("latin-1").split(",") if b.strip()]
    return [b for b in found if allowed is None or b in allowed]


def sse_event(data: bytes) -> bytes:
    """One Messages stream event as the Anthropic API frames it."""
    try:
        kind = orjson.loads(data).get("type")
    except (orjson.JSONDecodeError, AttributeError):
        kind = None
    name = kind.encode() if isinstance(kind, str) and kind.isidentifier() else b"message"
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def error_event(kind: str, message: str) -> bytes:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


async def event_stream_to_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Bedrock's event stream as Anthropic SSE (see the module's doc)."""
    buffer = EventStreamBuffer()
    async for chunk in chunks:
        buffer.add_data(chunk)
        out = []
        try:
            for message in buffer:
                out.append(_message_to_sse(message.headers, message.payload))
        except ParserError as exc:
            out.append(error_event("api_error", f"Bedrock's event stream was corrupt ({exc})."))
            yield b"".join(out)
            return
        if out:
            yield b"".join(out)


def _message_to_sse(headers: dict, payload: bytes) -> bytes:
    message_type = headers.get(":message-type")
    if message_type == "event" and headers.get(":event-type") == "chunk":
        try:
            encoded = orjson.loads(payload)["bytes"]
            return sse_event(base64.b64decode(encoded, validate=True))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return error_event("api_error", "Bedrock sent a chunk that is not an event.")
    if message_type in ("exception", "error"):
        name = headers.get(":exception-type") or headers.get(":error-code") or "exception"
        said = upstream.error_message(payload) or _message(payload) or name
        return error_event(STREAM_ERRORS.get(name, "api_error"), f"Bedrock: {name}: {said}")
    return b""  # other events (none today) carry nothing a Messages client reads


def _message(body: bytes) -> str:
    """Bedrock's own error shape: {"message": "..."} (or "Message")."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(data, dict):
        return ""
    said = data.get("message") or data.get("Message")
    return said[:300] if isinstance(said, str) else ""


class BedrockKind(Kind):
    name = "bedrock"
    protocol = "anthropic"
    credential_required = False  # the standard AWS sources serve when the record has none

    def __init__(self) -> None:
        self.credentials = AWSCredentials()

    def check_options(self, options: dict) -> dict:
        known = {"region", "anthropic_betas", "count_tokens"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"a bedrock provider takes no option {unknown[0]!r}")
        region = options.get("region")
        if not isinstance(region, str) or not region.strip():
            raise ValueError('a bedrock provider needs its AWS region: {"region": "us-east-1"}')
        betas = options.get("anthropic_betas")
        if betas is not None and not (
            isinstance(betas, list) and all(isinstance(b, str) for b in betas)
        ):
            raise ValueError("anthropic_betas must be a list of beta names")
        if not isinstance(options.get("count_tokens", True), bool):
            raise ValueError("count_tokens must be true or false")
        return options

    def check_credential(self, credential: str) -> None:
        parse_credential(credential)

    async def prepare(self, provider: ProviderInfo, request: ClientRequest) -> UpstreamRequest:
        region = str(provider.option("region", ""))
        model = quote(request.model, safe="")
        betas = client_betas(request.headers, provider.option("anthropic_betas"))
        body = adapt_body(request, betas)
        if request.path == COUNT_TOKENS_PATH:
            url, body, accept = self._count_tokens(provider, model, body)
        elif request.stream:
            url = f"{provider.base_url}/model/{model}/invoke-with-response-stream"
            accept = EVENT_STREAM
        else:
            url, accept = f"{provider.base_url}/model/{model}/invoke", "application/json"
        headers: Headers = [
            (b"content-type", b"application/json"),
            (b"accept", accept.encode()),
            *[(k.encode(), v.encode()) for k, v in provider.extra_headers],
        ]
        credentials = await self.credentials.get(provider)
        signed = sign(credentials, region, "POST", url, headers, body)
        # Not signed: how the answer is encoded must stay readable for the taps.
        signed.append((b"accept-encoding", b"identity"))
        return UpstreamRequest("POST", url, signed, body)

    def _count_tokens(self, provider: ProviderInfo, model: str, body: bytes):
        if provider.option("count_tokens", True) is False:
            raise ProxyError(
                ErrorKind.NOT_FOUND,
                f"Provider {provider.name!r} (AWS Bedrock) does not count tokens for this "
                "model here: Bedrock's CountTokens is not offered for it in this region.",
            )
        wrapped = {"input": {"invokeModel": {"body": body.decode()}}}
        return f"{provider.base_url}/model/{model}/count-tokens", orjson.dumps(wrapped), "*/*"

    def streaming(self, response: httpx.Response) -> bool:
        return response.headers.get("content-type", "").startswith(EVENT_STREAM)

    def answer(self, response: httpx.Response) -> AsyncIterator[bytes]:
        if self.streaming(response):
            return event_stream_to_sse(response.aiter_raw())
        if response.request.url.path.endswith("/count-tokens"):
            return _count_tokens_answer(response.aiter_raw())
        return response.aiter_raw()

    def answer_headers(self, response: httpx.Response) -> Iterable[tuple[bytes, bytes]]:
        streaming = self.streaming(response)
        for name, value in response.headers.raw:
            lowered = name.lower()
            if lowered == b"x-amzn-requestid":
                yield b"request-id", value  # Bedrock's request id, in the protocol's name
            elif lowered == b"content-type" and streaming:
                yield b"content-type", b"text/event-stream; charset=utf-8"
            else:
                yield name, value

    def error_message(self, body: bytes) -> str:
        return upstream.error_message(body) or _message(body)


async def _count_tokens_answer(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """CountTokens' ``{"inputTokens": n}`` as Anthropic's ``{"input_tokens": n}``."""
    body = b"".join([chunk async for chunk in chunks])
    try:
        tokens = orjson.loads(body)["inputTokens"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        tokens = None
    if not isinstance(tokens, int):
        error = {"type": "api_error", "message": "Bedrock's CountTokens answer had no count."}
        yield orjson.dumps({"type": "error", "error": error})
        return
    yield orjson.dumps({"input_tokens": tokens})
