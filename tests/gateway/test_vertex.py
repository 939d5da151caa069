"""The Vertex kind through a real gateway server against the fake Vertex and its fake OAuth
token endpoint: a service account's JWT assertion for an access token, refreshed before it
expires, sent to rawPredict / streamRawPredict."""

from __future__ import annotations

import time
from decimal import Decimal

import anthropic
import httpx
import orjson
import pytest

from accounts import services as key_services
from llmproxy.gateway import services as provider_services
from llmproxy.gateway.kinds import kind_of, tokens
from tests.fakes import MODEL
from tests.fakes import fake_provider as fu
from tests.fakes import fake_vertex as fv
from tests.fakes.bad_upstream import BadUpstream

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "say hi"}]
BASE = f"/v1/projects/{fv.PROJECT}/locations/{fv.REGION}/publishers/anthropic/models/"


@pytest.fixture
def secret(vertex_provider):
    return key_services.create_key(name="vertex key", budget_usd=Decimal(5))[1]


def client(gateway, secret: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)


def post(gateway, secret: str, body: dict, path: str = "/v1/messages"):
    return httpx.post(gateway.url + path, json=body, headers={"x-api-key": secret}, timeout=30)


def bearer(recorded) -> str:
    return {k.lower(): v for k, v in recorded.headers}["authorization"]


def predictions(fake) -> list:
    return [r for r in fake.requests if r.path != "/token"]


def test_a_message_goes_to_raw_predict_with_an_issued_token(gateway, vertex, secret, recorded):
    vertex.enqueue(fu.text("Hi from Vertex.", input_tokens=100, output_tokens=10))
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 50, "messages": MESSAGES})
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"] == "Hi from Vertex."
    (seen,) = predictions(vertex)
    assert seen.path == BASE + fv.MODEL_ID + ":rawPredict"
    assert seen.json["anthropic_version"] == "vertex-2023-10-16" and "model" not in seen.json
    headers = {k.lower(): v for k, v in seen.headers}
    assert headers["authorization"].removeprefix("Bearer ") in vertex.issued
    assert secret not in str(seen.headers) and "x-api-key" not in headers
    assert vertex.token_requests == 1 and vertex.refused_tokens == []
    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens) == (100, 10)
    assert event.cost_usd == (100 * Decimal("3.3") + 10 * Decimal("16.5")) / 10**6


def test_a_stream_and_a_tool_turn_go_to_stream_raw_predict(gateway, vertex, secret, recorded):
    vertex.enqueue(fu.tool_use("Bash", {"command": "ls"}, input_tokens=30, output_tokens=12))
    tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    with client(gateway, secret).messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, tools=tools
    ) as stream:
        final = stream.get_final_message()
    (block,) = [b for b in final.content if b.type == "tool_use"]
    assert block.input == {"command": "ls"}
    (seen,) = predictions(vertex)
    assert seen.path == BASE + fv.MODEL_ID + ":streamRawPredict"
    assert seen.json["stream"] is True
    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens, event.partial) == (30, 12, False)


def test_one_token_serves_many_calls_and_is_refreshed_before_it_expires(gateway, vertex, secret):
    vertex.token_lifetime = 4  # refreshed at half its life when that is under the margin
    body = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES}
    for _ in range(3):
        assert post(gateway, secret, body).status_code == 200
    assert vertex.token_requests == 1
    time.sleep(2.2)
    assert post(gateway, secret, body).status_code == 200
    assert vertex.token_requests == 2  # refreshed before the first token expired
    assert vertex.refused_tokens == []
    first, *_, last = predictions(vertex)
    assert bearer(first) != bearer(last)


def test_a_refused_grant_is_a_502_naming_the_provider(gateway, vertex, vertex_provider, secret):
    other, _ = fv.service_account(vertex.token_uri)  # the same account name, another key
    vertex_provider.credential = other
    vertex_provider.save()
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 502, answer.text
    message = answer.json()["error"]["message"]
    assert "vertex-us" in message and "token endpoint" in message
    assert "Your own key is fine" in message
    assert "PRIVATE KEY" not in answer.text
    assert vertex.refused_tokens == ["Invalid JWT Signature."]  # same account, other key


def test_a_token_the_provider_rejects_is_a_502(gateway, vertex, secret):
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 200
    vertex.issued.clear()  # the fake forgets its tokens: the next call's is refused
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 502
    assert "credential for provider 'vertex-us' was rejected" in answer.json()["error"]["message"]
    assert answer.headers["x-llmproxy-upstream-status"] == "401"


def test_a_wrong_project_is_a_502_with_googles_message(gateway, vertex, vertex_provider, secret):
    vertex_provider.options = {"region": fv.REGION, "project": "someone-elses"}
    vertex_provider.save()
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 502
    assert "Permission denied on resource project someone-elses" in answer.text
    assert answer.headers["x-llmproxy-upstream-status"] == "403"


def test_an_unknown_model_is_a_404_in_the_clients_shape(gateway, vertex, vertex_provider, secret):
    from llmproxy.gateway.models import ModelRoute

    ModelRoute.objects.filter(provider=vertex_provider).update(upstream_model="claude-nope@1")
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 404
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "claude-nope@1" in body["error"]["message"]


def test_the_models_own_errors_follow_the_status_table(gateway, vertex, secret):
    vertex.enqueue(fu.error(529, "overloaded_error", "busy"))
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 529
    assert answer.json()["error"]["type"] == "overloaded_error"


def test_an_unreachable_token_endpoint_fails_over_like_a_connection_error(
    gateway, vertex, add_vertex, recorded
):
    dead = BadUpstream()
    dead.close()  # nothing listens there
    account = orjson.loads(vertex.new_account())
    account["token_uri"] = dead.url + "/token"
    first = add_vertex(credential=orjson.dumps(account).decode(), name="vertex-dead-token")
    second = add_vertex(name="vertex-backup")
    from llmproxy.gateway.models import ModelRoute

    ModelRoute.objects.filter(provider=first).update(priority=10)
    ModelRoute.objects.filter(provider=second).update(priority=20)
    secret = key_services.create_key(name="k")[1]
    vertex.enqueue(fu.text("from the backup"))
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"] == "from the backup"
    (event,) = recorded(1)
    assert event.attempts == 2 and event.provider_id == second.pk
    # alone, it is the client's 502 saying what could not be reached
    second.enabled = False
    second.save()
    answer = post(gateway, secret, {"model": MODEL, "max_tokens": 5, "messages": MESSAGES})
    assert answer.status_code == 502
    assert "token endpoint of provider 'vertex-dead-token' could not be reached" in answer.text


def test_count_tokens_goes_to_the_publishers_count_tokens(gateway, vertex, secret, recorded):
    vertex.enqueue(fu.count_tokens(input_tokens=777))
    result = client(gateway, secret).messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert result.input_tokens == 777
    (seen,) = predictions(vertex)
    assert seen.path == BASE + "count-tokens:rawPredict" and seen.json["model"] == fv.MODEL_ID


def test_the_service_account_is_checked_when_saved(transactional_db):
    for credential, said in [("{}", "service account"), ("not json", "JSON"),
                             ('{"type": "service_account"}', "client_email")]:  # fmt: skip
        with pytest.raises(ValueError, match=said):
            provider_services.upsert_provider(
                name="v", kind="vertex", base_url="https://x.example", credential=credential,
                options={"region": "us-east5"},
            )  # fmt: skip


def test_the_refresh_margin_is_what_the_cache_keeps_to():
    token = tokens.Token("t", expires_at=1000.0, lifetime=3600.0)
    assert token.fresh(1000.0 - tokens.REFRESH_MARGIN_SECONDS - 1)
    assert not token.fresh(1000.0 - tokens.REFRESH_MARGIN_SECONDS + 1)
    assert kind_of("vertex").tokens is not None
