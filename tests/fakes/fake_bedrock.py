"""A fake AWS Bedrock runtime: InvokeModel, InvokeModelWithResponseStream and CountTokens for
Anthropic models, on loopback, checking every request's SigV4 signature as AWS does.

The signature is recomputed here from the AWS specification (not with botocore, which the
gateway signs with): the canonical request from the method, the path encoded twice, the
query, the signed headers and the SHA-256 of the body as received; the string to sign with
the credential scope; the key derived from the known secret, date, region and service. A
wrong secret, region, service, a clock more than five minutes off or a body changed after
signing gets AWS's 403. Streams are AWS's binary event-stream encoding (prelude, headers,
payload and both CRC32s), each chunk's payload ``{"bytes": <base64 event JSON>}``.

The answers themselves are the fake Anthropic provider's (its queue and helpers).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
import uuid
import zlib
from datetime import UTC, datetime
from urllib.parse import quote, unquote

import orjson
from aiohttp import web

from tests.fakes.fake_provider import FakeProvider, Reply, count_tokens, stream_events, text
from tests.fakes.fake_provider import _message as render_message

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIAFAKEBEDROCK00001"
SECRET_ACCESS_KEY = "fake/secret+access/key0123456789abcdefABCD"
CREDENTIAL = f"{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}"  # as a provider record holds it
MODEL_ID = "anthropic.claude-test-4-5-v1:0"
SKEW_SECONDS = 300

_ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_STREAM_EXCEPTIONS = {
    "overloaded_error": "throttlingException",
    "api_error": "internalServerException",
}


# --- AWS's event-stream encoding -----------------------------------------------------------


def _header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    return (
        struct.pack("B", len(name_bytes)) + name_bytes + b"\x07"  # 7: string
        + struct.pack(">H", len(value_bytes)) + value_bytes
    )  # fmt: skip


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total and header lengths, the prelude's CRC32, headers,
    payload, and the whole message's CRC32 (all big-endian)."""
    encoded = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def chunk_message(event: dict) -> bytes:
    data = orjson.dumps(event)
    payload = orjson.dumps({"bytes": base64.b64encode(data).decode(), "p": "abcdefghij"})
    headers = {":event-type": "chunk", ":content-type": "application/json",
               ":message-type": "event"}  # fmt: skip
    return encode_message(headers, payload)


def exception_message(kind: str, message: str) -> bytes:
    headers = {":exception-type": kind, ":content-type": "application/json",
               ":message-type": "exception"}  # fmt: skip
    return encode_message(headers, orjson.dumps({"message": message}))


# --- SigV4, as AWS checks it ---------------------------------------------------------------


class SignatureError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _canonical_uri(raw_path: str) -> str:
    path = raw_path.split("?", 1)[0]
    segments = [quote(quote(unquote(s), safe="-_.~"), safe="-_.~") for s in path.split("/")]
    return "/".join(segments) or "/"


def _canonical_query(raw_query: str) -> str:
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def verify(
    *, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes,
    secrets: dict[str, str], region: str, service: str, now: float,
) -> str:  # fmt: skip
    """The access key id of a correctly signed request; SignatureError (AWS's exception
    name and message) otherwise. ``headers``: names in lower case."""
    authorization = headers.get("authorization", "")
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields = dict(
        part.strip().split("=", 1) for part in authorization[17:].split(",") if "=" in part
    )
    try:
        key_id, date, scope_region, scope_service, terminator = fields["Credential"].split("/")
        signed_names = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except (KeyError, ValueError):
        raise SignatureError(
            "IncompleteSignatureException", "Authorization header requires 'Credential', "
            "'Signature' and 'SignedHeaders' parameters."
        ) from None  # fmt: skip
    if key_id not in secrets:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if scope_region != region:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region. (got {scope_region!r})",
        )
    if scope_service != service:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{service}'. ",
        )
    amz_date = headers.get("x-amz-date", "")
    if (
        "host" not in signed_names
        or "x-amz-date" not in signed_names
        or terminator != ("aws4_request")
    ):
        raise SignatureError("InvalidSignatureException", "host and x-amz-date must be signed.")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "x-amz-date is malformed.") from None
    if abs(signed_at.timestamp() - now) > SKEW_SECONDS or not amz_date.startswith(date):
        current = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than {current} (5 min.)",
        )
    body_hash = hashlib.sha256(body).hexdigest()
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared != body_hash:
        raise SignatureError(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_names
    )
    canonical = "\n".join([
        method, _canonical_uri(raw_path), _canonical_query(query), canonical_headers,
        ";".join(signed_names), body_hash,
    ])  # fmt: skip
    scope = f"{date}/{scope_region}/{scope_service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secrets[key_id]).encode(), date)
    for part in (scope_region, scope_service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        )
    return key_id


# --- the server ------------------------------------------------------------------------------


class FakeBedrock(FakeProvider):
    """Bedrock's runtime paths; the answers come from the fake provider's queue."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.region = REGION
        self.secrets = {ACCESS_KEY_ID: SECRET_ACCESS_KEY}
        self.models = {MODEL_ID}
        self.clock_skew = 0.0  # seconds this fake's clock is ahead of the real one
        self.count_tokens_supported = True
        self.signature_failures: list[str] = []
        self.split_writes = True  # cut each event-stream message across two writes

    def clear(self) -> None:
        super().clear()
        self.region = REGION
        self.secrets = {ACCESS_KEY_ID: SECRET_ACCESS_KEY}
        self.clock_skew = 0.0
        self.count_tokens_supported = True
        self.signature_failures.clear()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/model/{model}/invoke", self._invoke)
        app.router.add_post("/model/{model}/invoke-with-response-stream", self._invoke)
        app.router.add_post("/model/{model}/count-tokens", self._count_tokens)
        return app

    def _aws_error(self, status: int, kind: str, message: str, **extra: str) -> web.Response:
        headers = {
            **extra,
            "x-amzn-RequestId": str(uuid.uuid4()),
            "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/",
        }
        return web.Response(
            status=status, body=orjson.dumps({"message": message}), headers=headers,
            content_type="application/json",
        )  # fmt: skip

    async def _checked(self, request: web.Request) -> tuple[bytes, web.Response | None]:
        body = await self.record(request)
        try:
            verify(
                method=request.method, raw_path=request.raw_path, query=request.query_string,
                headers={k.lower(): v for k, v in request.headers.items()}, body=body,
                secrets=self.secrets, region=self.region, service="bedrock",
                now=time.time() + self.clock_skew,
            )  # fmt: skip
        except SignatureError as exc:
            self.signature_failures.append(exc.message)
            return body, self._aws_error(403, exc.kind, exc.message)
        model = unquote(request.match_info["model"])
        if model not in self.models:
            return body, self._aws_error(
                400, "ValidationException", "The provided model identifier is invalid."
            )
        return body, None

    def _validated(self, body: bytes) -> tuple[dict | None, web.Response | None]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return None, self._aws_error(400, "ValidationException", "Malformed input request")
        for key in ("model", "stream"):
            if key in data:
                return None, self._aws_error(
                    400, "ValidationException",
                    f"Malformed input request: #: extraneous key [{key}] is not permitted, "
                    "please reformat your input and try again.",
                )  # fmt: skip
        if data.get("anthropic_version") != "bedrock-2023-05-31":
            return None, self._aws_error(
                400, "ValidationException", "Malformed input request: anthropic_version"
            )
        return data, None

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        body, refused = await self._checked(request)
        if refused is not None:
            return refused
        _, refused = self._validated(body)
        if refused is not None:
            return refused
        reply = self.next_reply(text())
        if not isinstance(reply, Reply):
            reply = text()
        if reply.error is not None:
            error = reply.error.get("error", {})
            kind = _ERROR_TYPES.get(reply.status, "InternalServerException")
            said = str(error.get("message", ""))
            return self._aws_error(reply.status, kind, said, **reply.headers)
        model = unquote(request.match_info["model"])
        if request.path.endswith("/invoke-with-response-stream"):
            return await self._stream_events(request, reply, model)
        message = render_message(reply, model)
        usage = reply.usage
        headers = {
            "x-amzn-RequestId": str(uuid.uuid4()),
            "X-Amzn-Bedrock-Input-Token-Count": str(usage.get("input_tokens", 0)),
            "X-Amzn-Bedrock-Output-Token-Count": str(usage.get("output_tokens", 0)),
            "X-Amzn-Bedrock-Invocation-Latency": "12",
        }
        return web.Response(
            body=orjson.dumps(message), headers=headers, content_type="application/json"
        )

    async def _stream_events(self, request, reply: Reply, model: str) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "content-type": "application/vnd.amazon.eventstream",
                "x-amzn-RequestId": str(uuid.uuid4()),
                "X-Amzn-Bedrock-Content-Type": "application/json",
            }
        )
        await response.prepare(request)
        events = stream_events(reply, model)
        name, last = events[-1]
        usage = reply.usage
        metrics = {"inputTokenCount": usage.get("input_tokens", 0),
                   "outputTokenCount": usage.get("output_tokens", 0),
                   "invocationLatency": 12, "firstByteLatency": 5}  # fmt: skip
        events[-1] = (name, {**last, "amazon-bedrock-invocationMetrics": metrics})
        for sent, (name, data) in enumerate(events):
            if sent == reply.stream_error_after:
                kind = _STREAM_EXCEPTIONS.get(reply.stream_error_type, "internalServerException")
                await response.write(exception_message(kind, "fake mid-stream failure"))
                return response
            if sent == reply.drop_after:
                request.transport.close()
                return response
            message = chunk_message({"type": name, **data})
            if self.split_writes:
                half = len(message) // 2
                await response.write(message[:half])
                await response.write(message[half:])
            else:
                await response.write(message)
        await response.write_eof()
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body, refused = await self._checked(request)
        if refused is not None:
            return refused
        if not self.count_tokens_supported:
            return self._aws_error(
                400, "ValidationException", "The provided model doesn't support counting tokens."
            )
        try:
            inner = orjson.loads(orjson.loads(body)["input"]["invokeModel"]["body"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._aws_error(400, "ValidationException", "Malformed input request")
        _, refused = self._validated(orjson.dumps(inner))
        if refused is not None:
            return refused
        reply = self.next_reply(count_tokens())
        tokens = (reply.json_body or {}).get("input_tokens", 42) if isinstance(reply, Reply) else 42
        return web.json_response({"inputTokens": tokens}, headers={"x-amzn-RequestId": "cnt-1"})
