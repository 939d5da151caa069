"""The Bedrock kind through a real gateway server against the fake Bedrock: clients speak
Anthropic Messages, the gateway signs InvokeModel calls with SigV4 and turns Bedrock's event
stream back into Anthropic SSE."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from llmproxy.gateway import services as provider_services
from llmproxy.gateway.kinds import kind_of
from tests.fakes import MODEL
from tests.fakes import fake_bedrock as fb
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "say hi"}]
CREDENTIAL = fb.CREDENTIAL


@pytest.fixture
def secret(bedrock_provider):
    from accounts import services as key_services

    _, secret = key_services.create_key(name="bedrock key", budget_usd=Decimal(5))
    return secret


def client(gateway, secret: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)


def post(gateway, secret: str, body: dict, path: str = "/v1/messages", **headers):
    return httpx.post(
        gateway.url + path, json=body, headers={"x-api-key": secret, **headers}, timeout=30
    )


def test_a_message_is_signed_sent_to_invoke_and_priced_at_the_providers_rate(
    gateway, bedrock, secret, recorded
):
    bedrock.enqueue(fu.text("Hi from Bedrock.", input_tokens=100, output_tokens=10))
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 50, "messages": MESSAGES},
                  **{"anthropic-beta": "interleaved-thinking-2025-05-14"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"] == "Hi from Bedrock."
    (seen,) = bedrock.requests
    assert seen.path == f"/model/{fb.MODEL_ID}/invoke"
    assert seen.json["anthropic_version"] == "bedrock-2023-05-31"
    assert seen.json["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]
    assert "model" not in seen.json and "stream" not in seen.json
    headers = {k.lower(): v for k, v in seen.headers}
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={fb.ACCESS_KEY_ID}/")
    assert secret not in str(seen.headers) and "x-api-key" not in headers
    assert bedrock.signature_failures == []
    # Bedrock's request id under the protocol's name
    assert answer.headers["request-id"] and "x-amzn-requestid" not in answer.headers
    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens) == (100, 10)
    assert event.upstream_model == fb.MODEL_ID
    assert event.cost_usd == Decimal(100 * 4 + 10 * 20) / 10**6


def test_a_stream_becomes_anthropic_sse_the_sdk_reads(gateway, bedrock, secret, recorded):
    bedrock.enqueue(
        fu.text("Streamed from Bedrock.", input_tokens=70, output_tokens=9, cache_read=500)
    )
    with client(gateway, secret).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Streamed from Bedrock."
    assert final.usage.output_tokens == 9
    assert bedrock.requests[-1].path == f"/model/{fb.MODEL_ID}/invoke-with-response-stream"
    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens, event.cache_read_tokens) == (70, 9, 500)
    assert not event.partial
    assert event.cost_usd == (Decimal(70 * 4 + 9 * 20) + Decimal(500) * Decimal("0.4")) / 10**6


def test_the_sse_is_framed_as_anthropics_own(gateway, bedrock, secret, fake):
    """Event for event, the same frames the Anthropic API sends for the same answer."""
    reply = fu.tool_use("Bash", {"command": "ls"}, thinking="think first")
    bedrock.enqueue(reply)
    body = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES, "stream": True}
    answer = post(gateway, secret, body)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in answer.text.split("\n\n") if f]
    expected = fu.stream_events(reply, fb.MODEL_ID)
    assert len(frames) == len(expected)
    for frame, (name, data) in zip(frames, expected, strict=True):
        event_line, data_line = frame.split("\n")
        assert event_line == f"event: {name}"
        got = orjson.loads(data_line.removeprefix("data: "))
        got.pop("amazon-bedrock-invocationMetrics", None)
        if name == "message_start":
            got["message"].pop("id"), data["message"].pop("id")
        assert got == {"type": name, **data}


def test_a_tool_turn_streams_its_input(gateway, bedrock, secret, recorded):
    bedrock.enqueue(fu.tool_use("Bash", {"command": "echo hi"}, input_tokens=30, output_tokens=12))
    tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    with client(gateway, secret).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, tools=tools
    ) as stream:
        final = stream.get_final_message()
    (block,) = [b for b in final.content if b.type == "tool_use"]
    assert block.name == "Bash" and block.input == {"command": "echo hi"}
    assert final.stop_reason == "tool_use"
    assert bedrock.requests[-1].json["tools"] == tools
    (event,) = recorded(1)
    assert event.output_tokens == 12


@pytest.mark.parametrize(
    ("status", "client_status", "error_type"),
    [(400, 400, "invalid_request_error"), (429, 429, "rate_limit_error"),
     (500, 502, "api_error"), (503, 503, "overloaded_error")],
)  # fmt: skip
def test_bedrock_errors_follow_the_status_table(
    gateway, bedrock, secret, recorded, status, client_status, error_type
):
    bedrock.enqueue(fu.error(status, "x", "bedrock says no", headers={}))
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == client_status, answer.text
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, answer.text
    assert "bedrock says no" in body["error"]["message"]
    assert answer.headers["x-llmproxy-upstream-status"] == str(status)
    (event,) = recorded(1)
    assert event.cost_usd == 0


def test_an_exception_mid_stream_is_the_protocols_error_event(gateway, bedrock, secret, recorded):
    bedrock.enqueue(fu.midstream_error(after_events=3, type="overloaded_error"))
    body = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES, "stream": True}
    answer = post(gateway, secret, body)
    assert answer.status_code == 200
    last = answer.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\n")
    error = orjson.loads(last.split("data: ", 1)[1])
    assert error["error"]["type"] == "overloaded_error"
    assert "throttlingException" in error["error"]["message"]
    (event,) = recorded(1)
    assert event.error


@pytest.mark.parametrize("problem", ["secret", "region", "clock"])
def test_a_refused_signature_is_a_502_naming_the_provider(
    gateway, bedrock, bedrock_provider, secret, recorded, problem
):
    if problem == "secret":
        bedrock_provider.credential = f"{fb.ACCESS_KEY_ID}:not-the-secret"
        said = "signature we calculated does not match"
    elif problem == "region":
        bedrock_provider.options = {"region": "eu-west-1"}
        said = "scoped to a valid region"
    else:
        bedrock.clock_skew = 600
        said = "Signature expired"
    bedrock_provider.save()
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 502, answer.text
    message = answer.json()["error"]["message"]
    assert "bedrock-us" in message and said in message and "Your own key is fine" in message
    assert answer.headers["x-llmproxy-upstream-status"] == "403"
    assert fb.SECRET_ACCESS_KEY not in answer.text
    assert len(bedrock.signature_failures) == 1
    recorded(1)


def test_count_tokens_uses_bedrocks_count_tokens(gateway, bedrock, secret, recorded):
    bedrock.enqueue(fu.count_tokens(input_tokens=1234))
    result = client(gateway, secret).messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert result.input_tokens == 1234
    seen = bedrock.requests[-1]
    assert seen.path == f"/model/{fb.MODEL_ID}/count-tokens"
    inner = orjson.loads(seen.json["input"]["invokeModel"]["body"])
    assert inner["messages"] == MESSAGES and "model" not in inner
    (event,) = recorded(1)
    assert event.cost_usd == 0


def test_count_tokens_where_bedrock_has_none_is_a_clear_error(
    gateway, bedrock, bedrock_provider, secret
):
    bedrock.count_tokens_supported = False
    answer = post(gateway, secret, {"model": MODEL, "messages": MESSAGES},
                  path="/v1/messages/count_tokens")  # fmt: skip
    assert answer.status_code == 400
    assert "counting tokens" in answer.json()["error"]["message"]
    bedrock_provider.options = {"region": fb.REGION, "count_tokens": False}
    bedrock_provider.save()
    answer = post(gateway, secret, {"model": MODEL, "messages": MESSAGES},
                  path="/v1/messages/count_tokens")  # fmt: skip
    assert answer.status_code == 404
    body = answer.json()
    assert body["error"]["type"] == "not_found_error" and "CountTokens" in body["error"]["message"]


def test_the_standard_aws_sources_serve_when_the_record_has_no_keys(
    gateway, bedrock, transactional_db, monkeypatch, tmp_path, recorded, add_bedrock
):
    from accounts import services as key_services

    for name, value in {
        "AWS_ACCESS_KEY_ID": fb.ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": fb.SECRET_ACCESS_KEY,
        "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE":
        str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(kind_of("bedrock").credentials, "_chain", None)
    add_bedrock(credential="")
    _, secret = key_services.create_key(name="k")
    bedrock.enqueue(fu.text("from the environment's keys"))
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 200, answer.text
    assert bedrock.signature_failures == []
    monkeypatch.setattr(kind_of("bedrock").credentials, "_chain", None)


def test_options_and_credentials_are_checked_when_saved(transactional_db):
    with pytest.raises(ValueError, match="region"):
        provider_services.upsert_provider(
            name="b", kind="bedrock", base_url="https://x.example", credential=CREDENTIAL,
            options={},
        )  # fmt: skip
    with pytest.raises(ValueError, match="secret access key"):
        provider_services.upsert_provider(
            name="b", kind="bedrock", base_url="https://x.example", credential="AKIAONLY",
            options={"region": "us-east-1"},
        )  # fmt: skip


# --- the fake's own checks ---------------------------------------------------------------


def signed(url: str, body: bytes, *, secret=fb.SECRET_ACCESS_KEY, region=fb.REGION,
           service="bedrock") -> AWSRequest:  # fmt: skip
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"content-type": "application/json"})  # fmt: skip
    SigV4Auth(Credentials(fb.ACCESS_KEY_ID, secret), service, region).add_auth(request)
    return request


def check(request: AWSRequest, body: bytes | None = None, now: float | None = None) -> str:
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(request.url)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = parts.netloc
    return fb.verify(
        method="POST", raw_path=parts.path, query=parts.query, headers=headers,
        body=request.body if body is None else body,
        secrets={fb.ACCESS_KEY_ID: fb.SECRET_ACCESS_KEY},
        region=fb.REGION, service="bedrock", now=time.time() if now is None else now,
    )  # fmt: skip


URL = "http://127.0.0.1:9/model/anthropic.claude-test-4-5-v1%3A0/invoke"


def test_the_fake_accepts_what_aws_would_and_refuses_the_rest():
    body = b'{"messages": []}'
    assert check(signed(URL, body)) == fb.ACCESS_KEY_ID
    with pytest.raises(fb.SignatureError, match="does not match"):
        check(signed(URL, body), body=b'{"messages": [1]}')  # the body changed after signing
    with pytest.raises(fb.SignatureError, match="correct service"):
        check(signed(URL, body, service="s3"))
    with pytest.raises(fb.SignatureError, match="valid region"):
        check(signed(URL, body, region="eu-west-1"))
    with pytest.raises(fb.SignatureError, match="does not match"):
        check(signed(URL, body, secret="wrong"))
    import time

    with pytest.raises(fb.SignatureError, match="expired"):
        check(signed(URL, body), now=time.time() + 301)


def test_the_fakes_event_stream_decodes_with_its_crcs():
    from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

    message = fb.chunk_message({"type": "ping"})
    buffer = EventStreamBuffer()
    buffer.add_data(message)
    (decoded,) = list(buffer)
    assert decoded.headers[":event-type"] == "chunk"
    corrupt = message[:-1] + bytes([message[-1] ^ 1])
    buffer = EventStreamBuffer()
    buffer.add_data(corrupt)
    with pytest.raises(ChecksumMismatch):
        list(buffer)
