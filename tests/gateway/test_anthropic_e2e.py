"""Claude's Messages API through a real gateway server, driven by the official SDK."""

from __future__ import annotations

import time
from decimal import Decimal

import anthropic
import httpx
import pytest

from tests.fakes import MODEL, UPSTREAM_CREDENTIAL
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "say hi"}]


def client(gateway, secret: str, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0, **kwargs)


def upstream_headers(fake, index: int = -1) -> dict[str, str]:
    return {name.lower(): value for name, value in fake.requests[index].headers}


def assert_only_provider_credential(fake, secret: str) -> None:
    for request in fake.requests:
        headers = {name.lower(): value for name, value in request.headers}
        assert headers.get("x-api-key") == UPSTREAM_CREDENTIAL
        assert "authorization" not in headers
        assert all(secret not in value for value in headers.values())
        assert secret.encode() not in request.body


def test_streaming_text_is_relayed_priced_and_recorded(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(
        fu.text(
            "Hello there!",
            input_tokens=120,
            output_tokens=40,
            cache_read=1000,
            cache_write_5m=200,
            cache_write_1h=100,
        )
    )
    with client(gateway, secret).messages.stream(
        model=MODEL, max_tokens=1024, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello there!"
    assert final.usage.input_tokens == 120 and final.usage.output_tokens == 40
    assert_only_provider_credential(fake, secret)

    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens) == (120, 40)
    assert (event.cache_read_tokens, event.cache_write_tokens) == (1000, 300)
    assert event.cache_write_1h_tokens == 100
    expected = (
        Decimal(120 * 3 + 40 * 15)
        + Decimal("1000") * Decimal("0.30")
        + Decimal(200) * Decimal("3.75")
        + Decimal(100 * 6)
    ) / Decimal(1_000_000)
    assert event.cost_usd == expected
    assert event.status == 200 and not event.partial and event.error == ""
    assert event.client == "anthropic-python" and event.kind == "turn"
    assert event.endpoint == "/v1/messages" and event.model == MODEL
    assert event.ttft_ms is not None and event.latency_ms >= event.ttft_ms


def test_non_streaming_with_bearer_auth(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.text("plain", input_tokens=7, output_tokens=3))
    sdk = anthropic.Anthropic(base_url=gateway.url, auth_token=secret, max_retries=0)
    message = sdk.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert message.content[0].text == "plain"
    assert_only_provider_credential(fake, secret)
    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens) == (7, 3)
    assert event.cost_usd == Decimal(7 * 3 + 3 * 15) / Decimal(1_000_000)


def test_tool_use_with_thinking_streams_through(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.tool_use(name="Bash", input={"command": "echo hi"}, thinking="Let me run it."))
    tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    with client(gateway, secret).messages.stream(
        model=MODEL, max_tokens=1024, messages=MESSAGES, tools=tools
    ) as stream:
        final = stream.get_final_message()
    kinds = [block.type for block in final.content]
    assert "thinking" in kinds and "tool_use" in kinds
    tool = next(block for block in final.content if block.type == "tool_use")
    assert tool.input == {"command": "echo hi"} and final.stop_reason == "tool_use"
    thinking = next(block for block in final.content if block.type == "thinking")
    assert thinking.signature
    assert recorded(1)[0].output_tokens > 0


def test_count_tokens_is_forwarded_and_never_billed(gateway, fake, make_key, recorded):
    secret = make_key(budget_usd=Decimal("0.000001"))
    fake.enqueue(fu.count_tokens(input_tokens=4321))
    result = client(gateway, secret).messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert result.input_tokens == 4321
    assert fake.requests[-1].path == "/v1/messages/count_tokens"
    (event,) = recorded(1)
    assert event.kind == "count" and event.cost_usd == 0


def test_the_query_string_and_anthropic_prefix_pass(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.text("prefixed"))
    response = httpx.post(
        gateway.url + "/anthropic/v1/messages?beta=true",
        headers={
            "x-api-key": secret,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "claude-code-20250219",
            "x-stainless-retry-count": "0",
            "x-claude-code-session-id": "sess-1",
            "cookie": "a=b",
            "x-custom": "no",
        },
        json={"model": MODEL, "max_tokens": 5, "messages": MESSAGES},
    )
    assert response.status_code == 200
    seen = fake.requests[-1]
    assert seen.path == "/v1/messages" and seen.query == "beta=true"
    headers = upstream_headers(fake)
    assert headers["anthropic-beta"] == "claude-code-20250219"
    assert headers["x-stainless-retry-count"] == "0"
    assert "cookie" not in headers and "x-custom" not in headers
    assert recorded(1)[0].session_id == "sess-1"


def test_response_headers_pass_by_allow_list(gateway, fake, make_key):
    secret = make_key()
    fake.enqueue(
        fu.text(
            "h",
            headers={
                "anthropic-ratelimit-requests-remaining": "99",
                "set-cookie": "session=upstream",
                "x-internal": "1",
            },
        )
    )
    response = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": secret},
        json={"model": MODEL, "max_tokens": 5, "messages": MESSAGES},
    )
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert "set-cookie" not in response.headers and "x-internal" not in response.headers
    assert response.headers["request-id"]
    assert response.headers["x-llmproxy-request-id"]


@pytest.mark.parametrize(
    ("policy", "kwargs", "exception", "error_type"),
    [
        (
            {"allowed_models": ["claude-other-*"]},
            {},
            anthropic.PermissionDeniedError,
            "permission_error",
        ),
        (
            {},
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            anthropic.PermissionDeniedError,
            "permission_error",
        ),
        (
            {"allowed_endpoints": ["/v1/messages/count_tokens"]},
            {},
            anthropic.PermissionDeniedError,
            "permission_error",
        ),
    ],
)
def test_policy_refusals_are_403_and_never_reach_upstream(
    gateway, fake, make_key, policy, kwargs, exception, error_type
):
    secret = make_key(**policy)
    with pytest.raises(exception) as raised:
        client(gateway, secret).messages.create(
            model=MODEL, max_tokens=5, messages=MESSAGES, **kwargs
        )
    assert raised.value.status_code == 403
    assert raised.value.body["error"]["type"] == error_type
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert fake.requests == []


def test_a_hosted_tool_the_key_allows_goes_through(gateway, fake, make_key, recorded):
    secret = make_key(allowed_tools=["web_search*"])
    fake.enqueue(fu.text("searched", web_search_requests=2))
    client(gateway, secret).messages.create(
        model=MODEL,
        max_tokens=5,
        messages=MESSAGES,
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )
    (event,) = recorded(1)
    assert event.tool_calls == {"web_search": 2}
    assert event.cost_usd == Decimal(10 * 3 + 5 * 15) / Decimal(1_000_000) + Decimal("0.02")


def test_hosted_tool_calls_are_reserved_against_the_budget(gateway, fake, make_key, recorded):
    # Tokens of this request reserve under $0.002; each web search costs $0.01. Without
    # max_uses the gateway reserves 10 searches ($0.10 > budget): refused before the call.
    secret = make_key(allowed_tools=["web_search*"], budget_usd=Decimal("0.02"))
    search = {"type": "web_search_20250305", "name": "web_search"}
    ask = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES}
    refused = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": secret}, json={**ask, "tools": [search]}
    )
    assert refused.status_code == 402 and refused.json()["error"]["type"] == "billing_error"
    assert fake.requests == []
    # max_uses 1 bounds the searches: one is reserved ($0.01 + tokens), which fits.
    fake.enqueue(fu.text("searched once", web_search_requests=1))
    limited = {**ask, "tools": [{**search, "max_uses": 1}]}
    admitted = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": secret}, json=limited)
    assert admitted.status_code == 200, admitted.text
    (event,) = recorded(1)
    assert event.tool_calls == {"web_search": 1} and event.cost_usd <= Decimal("0.02")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "No API key"),
        ({"x-api-key": "llmp-not-a-real-key"}, "Invalid API key"),
        ({"authorization": "Bearer sk-ant-someone-elses"}, "Invalid API key"),
    ],
)
def test_missing_and_unknown_keys_are_401(gateway, fake, provider, headers, message):
    response = httpx.post(
        gateway.url + "/v1/messages",
        headers=headers,
        json={"model": MODEL, "max_tokens": 5, "messages": MESSAGES},
    )
    assert response.status_code == 401
    assert response.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": response.json()["error"]["message"]},
    }
    assert message in response.json()["error"]["message"]
    assert response.headers["x-should-retry"] == "false"
    assert fake.requests == []


def test_revoked_and_expired_keys_are_401(gateway, fake, make_key):
    from datetime import timedelta

    from django.utils import timezone

    from accounts import services
    from accounts.models import ApiKey

    revoked = make_key(name="revoked")
    services.revoke_keys(queryset=ApiKey.objects.filter(name="revoked"))
    expired = make_key(name="expired", expires_at=timezone.now() - timedelta(seconds=1))
    for secret, words in ((revoked, "revoked"), (expired, "expired")):
        with pytest.raises(anthropic.AuthenticationError) as raised:
            client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
        assert words in raised.value.body["error"]["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{not json", 400), (b"[1,2]", 400), (b"", 400), (b'{"messages": []}', 400)],
)
def test_bad_input_is_a_clear_4xx(gateway, fake, make_key, body, status):
    secret = make_key()
    response = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": secret}, content=body)
    assert response.status_code == status
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests == []


def test_oversized_body_is_413(gateway, fake, make_key, settings):
    settings.LLMPROXY_MAX_BODY_BYTES = 2048
    secret = make_key()
    response = httpx.post(
        gateway.url + "/v1/messages", headers={"x-api-key": secret}, content=b"x" * 5000
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_over_budget_is_402_billing_error(gateway, fake, make_key, recorded):
    secret = make_key(budget_usd=Decimal("0.002"), budget_period="day")
    # reserves about $0.0003 (a tiny prompt, max_tokens 5), then costs $0.0018
    fake.enqueue(fu.text("spend it", input_tokens=100, output_tokens=100))
    client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.APIStatusError) as raised:
        client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert raised.value.status_code == 402
    assert raised.value.body["error"]["type"] == "billing_error"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == 1
    assert len(recorded(1)) == 1


def test_rate_limit_is_429_with_retry_after(gateway, fake, make_key):
    secret = make_key(rpm=1)
    client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as raised:
        client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 60


def test_unpriced_model_refused_for_budgeted_keys_only(gateway, fake, make_key, recorded):
    budgeted = make_key(budget_usd=Decimal(10))
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        client(gateway, budgeted).messages.create(
            model="mystery-model", max_tokens=5, messages=MESSAGES
        )
    assert "no price" in raised.value.body["error"]["message"]
    free = make_key()
    client(gateway, free).messages.create(model="mystery-model", max_tokens=5, messages=MESSAGES)
    (event,) = recorded(1)
    assert event.cost_usd == 0 and "no price" in event.error


@pytest.mark.parametrize(
    ("status", "answered", "error_type", "exception"),
    [
        (429, 429, "rate_limit_error", anthropic.RateLimitError),
        (529, 529, "overloaded_error", anthropic.APIStatusError),
        (500, 502, "api_error", anthropic.APIStatusError),  # the status table: 500 -> 502
    ],
)
def test_upstream_errors_keep_their_retry_semantics(
    gateway, fake, make_key, recorded, status, answered, error_type, exception
):
    secret = make_key()
    fake.enqueue(fu.error(status, error_type, "upstream says no", headers={"retry-after": "7"}))
    with pytest.raises(exception) as raised:
        client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert raised.value.status_code == answered
    assert raised.value.body["error"]["type"] == error_type
    assert "upstream says no" in raised.value.body["error"]["message"]
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.response.headers["x-llmproxy-upstream-status"] == str(status)
    (event,) = recorded(1)
    assert event.status == answered and event.cost_usd == 0 and "upstream says no" in event.error


def test_upstream_credential_rejection_is_a_502_naming_the_provider(
    gateway, fake, make_key, recorded
):
    secret = make_key()
    fake.enqueue(fu.error(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(anthropic.APIStatusError) as raised:
        client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert raised.value.status_code == 502
    assert raised.value.body["error"]["type"] == "api_error"
    assert "fake-anthropic" in raised.value.body["error"]["message"]
    assert "credential" in raised.value.body["error"]["message"]
    assert recorded(1)[0].status == 502


def test_an_upstream_403_says_what_the_provider_said(gateway, fake, make_key, recorded):
    """A permission or region refusal is not a bad credential: pass the provider's words on
    (as a 502: a 403 would tell the client that its own key is refused)."""
    secret = make_key()
    fake.enqueue(fu.error(403, "permission_error", "This model is not available in your region"))
    with pytest.raises(anthropic.APIStatusError) as raised:
        client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert raised.value.status_code == 502
    message = raised.value.body["error"]["message"]
    assert "not available in your region" in message and "credential" not in message
    (event,) = recorded(1)
    assert event.status == 502 and "not available in your region" in event.error


def test_mid_stream_upstream_error_reaches_the_sdk(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.midstream_error(after_events=3, type="overloaded_error"))
    stream = client(gateway, secret).messages.stream(model=MODEL, max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.APIStatusError) as raised, stream as events:
        for _ in events:
            pass
    assert "overloaded" in str(raised.value).lower()
    (event,) = recorded(1)
    assert event.status == 200 and event.error  # recorded, with what it used before failing


def test_upstream_down_is_a_502(gateway, make_key, recorded):
    from llmproxy.gateway import services as provider_services

    provider_services.upsert_provider(
        name="fake-anthropic", kind="anthropic", base_url="http://127.0.0.1:9", credential="x"
    )
    secret = make_key()
    with pytest.raises(anthropic.APIStatusError) as raised:
        client(gateway, secret).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert raised.value.status_code == 502
    assert "could not be reached" in raised.value.body["error"]["message"]
    assert recorded(1)[0].status == 502


def test_models_lists_what_the_key_may_use(gateway, fake, make_key):
    secret = make_key(allowed_models=["claude-test-*"])
    page = client(gateway, secret).models.list()
    ids = [model.id for model in page.data]
    assert ids and all(i.startswith("claude-test-") for i in ids)


def test_head_warmup_is_cheap_and_needs_no_key(gateway, fake):
    for path in ("/", "/anthropic"):
        response = httpx.head(gateway.url + path)
        assert response.status_code == 200
    assert fake.requests == []


def test_disconnect_cancels_upstream_and_records_partial_usage(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.hang_after(events=2, input_tokens=55))
    body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST", gateway.url + "/v1/messages", headers={"x-api-key": secret}, json=body
        ) as response,
    ):
        first = next(response.iter_raw())
        assert b"message_start" in first  # relayed while the upstream still streams
    # the client hung up: the gateway must cancel the upstream call and settle
    deadline = time.monotonic() + 5
    while not fake.disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.disconnects == 1
    (event,) = recorded(1)
    assert event.partial and event.input_tokens == 55
    assert event.error == "client disconnected"


def test_a_json_answer_cut_short_is_a_502_never_a_truncated_200(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.drop_after(input_tokens=21))
    body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES}
    response = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": secret}, json=body)
    assert response.status_code == 502
    assert response.json()["type"] == "error"
    assert "broke mid-answer" in response.json()["error"]["message"]
    (event,) = recorded(1)
    assert event.partial and "broke" in event.error


def test_a_json_answer_goes_out_whole_with_its_length(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.text("all of it", input_tokens=8, output_tokens=3))
    body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES}
    response = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": secret}, json=body)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    assert response.json()["content"][0]["text"] == "all of it"
    (event,) = recorded(1)
    assert not event.partial and (event.input_tokens, event.output_tokens) == (8, 3)


def test_a_connection_cut_mid_stream_becomes_an_sse_error_event(gateway, fake, make_key, recorded):
    secret = make_key()
    fake.enqueue(fu.drop_after(events=3, input_tokens=21))
    body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES, "stream": True}
    response = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": secret}, json=body)
    assert response.status_code == 200
    assert response.text.rstrip().split("\n\n")[-1].startswith("event: error")
    assert '"type":"api_error"' in response.text
    (event,) = recorded(1)
    assert event.partial and event.input_tokens == 21 and "broke" in event.error


def test_wrong_methods_and_a_trailing_slash(gateway, fake, make_key, recorded):
    secret = make_key()
    got = httpx.get(gateway.url + "/v1/messages", headers={"x-api-key": secret})
    assert got.status_code == 405 and got.headers["allow"] == "POST"
    assert got.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Use POST for /v1/messages."},
    }
    put = httpx.put(gateway.url + "/openai/v1/responses", headers={"authorization": "Bearer x"})
    assert put.status_code == 405 and put.json()["error"]["code"] == "method_not_allowed"
    fake.enqueue(fu.text("slash", input_tokens=3, output_tokens=1))
    body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES}
    slashed = httpx.post(gateway.url + "/v1/messages/", headers={"x-api-key": secret}, json=body)
    assert slashed.status_code == 200 and slashed.json()["content"][0]["text"] == "slash"
    assert fake.requests[-1].path == "/v1/messages"
    recorded(1)
