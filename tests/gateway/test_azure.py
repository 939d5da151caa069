"""The Azure kind through a real gateway server against the fake Azure resource: Responses
and Chat, v1 and dated API versions, deployments, api-key and Entra tokens."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from accounts import services as key_services
from llmproxy.gateway import services as provider_services
from tests.fakes import OPENAI_MODEL
from tests.fakes import fake_azure as fa
from tests.fakes import fake_openai as fo

pytestmark = pytest.mark.e2e

VERSION = "2025-04-01-preview"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def secret(azure_provider):
    return key_services.create_key(name="azure key", budget_usd=Decimal(5))[1]


def client(gateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)


def cost(uncached: int, cached: int, output: int) -> Decimal:
    return (uncached * Decimal(2) + cached * Decimal("0.2") + output * Decimal(12)) / 10**6


def headers_of(recorded) -> dict[str, str]:
    return {k.lower(): v for k, v in recorded.headers}


def calls(fake) -> list:
    return [r for r in fake.requests if "/oauth2/" not in r.path]


def test_responses_go_to_the_v1_api_with_the_deployment_and_the_key(
    gateway, azure, secret, recorded
):
    azure.enqueue(fo.response("Hi from Azure.", input_tokens=300, cached_tokens=100,
                              output_tokens=20))  # fmt: skip
    answer = client(gateway, secret).responses.create(model=OPENAI_MODEL, input="hi")
    assert answer.output_text == "Hi from Azure."
    (seen,) = calls(azure)
    assert seen.path == "/openai/v1/responses" and seen.query == ""
    assert seen.json["model"] == fa.DEPLOYMENT
    headers = headers_of(seen)
    assert headers["api-key"] == fa.API_KEY and "authorization" not in headers
    assert secret not in str(seen.headers)
    (event,) = recorded(1)
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (200, 100, 20)
    assert event.cost_usd == cost(200, 100, 20)
    assert event.upstream_model == fa.DEPLOYMENT


def test_a_streamed_tool_call_through_a_dated_api_version(
    gateway, azure, azure_provider, secret, recorded
):
    azure_provider.options = {"api_version": VERSION}
    azure_provider.save()
    azure.enqueue(fo.function_call("exec_command", '{"cmd": "ls"}', input_tokens=50,
                                   output_tokens=9))  # fmt: skip
    with client(gateway, secret).responses.stream(model=OPENAI_MODEL, input="run ls") as stream:
        final = stream.get_final_response()
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "exec_command" and call.arguments == '{"cmd": "ls"}'
    (seen,) = calls(azure)
    assert seen.path == "/openai/responses" and seen.query == f"api-version={VERSION}"
    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens, event.partial) == (50, 9, False)


@pytest.mark.parametrize("version", [None, VERSION])
def test_chat_streams_to_the_deployment(gateway, azure, azure_provider, secret, recorded, version):
    azure_provider.options = {"api_version": version} if version else {}
    azure_provider.save()
    azure.enqueue(fo.chat("Chatty.", prompt_tokens=30, completion_tokens=7))
    chunks = list(
        client(gateway, secret).chat.completions.create(
            model=OPENAI_MODEL, messages=CHAT, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Chatty."
    (seen,) = calls(azure)
    if version:
        assert seen.path == f"/openai/deployments/{fa.DEPLOYMENT}/chat/completions"
        assert seen.query == f"api-version={version}"
    else:
        assert seen.path == "/openai/v1/chat/completions" and seen.json["model"] == fa.DEPLOYMENT
    (event,) = recorded(1)
    assert (event.input_tokens, event.output_tokens) == (30, 7)
    assert event.cost_usd == cost(30, 0, 7)


def test_an_unknown_deployment_is_azures_404(gateway, azure, azure_provider, secret):
    azure.deployments = set()
    answer = httpx.post(gateway.url + "/v1/responses", json={"model": OPENAI_MODEL, "input": "x"},
                        headers={"authorization": f"Bearer {secret}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 404
    assert "deployment for this resource does not exist" in answer.json()["error"]["message"]
    assert answer.headers["x-llmproxy-upstream-status"] == "404"


def test_an_unsupported_api_version_is_passed_on(gateway, azure, azure_provider, secret):
    azure_provider.options = {"api_version": "1999-01-01"}
    azure_provider.save()
    answer = httpx.post(gateway.url + "/v1/responses", json={"model": OPENAI_MODEL, "input": "x"},
                        headers={"authorization": f"Bearer {secret}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "API version not supported"


def test_a_wrong_key_is_a_502_naming_the_provider(gateway, azure, azure_provider, secret):
    azure_provider.credential = "not-the-key"
    azure_provider.save()
    answer = httpx.post(gateway.url + "/v1/responses", json={"model": OPENAI_MODEL, "input": "x"},
                        headers={"authorization": f"Bearer {secret}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 502
    message = answer.json()["error"]["message"]
    assert "azure-eu" in message and "Your own key is fine" in message
    assert "not-the-key" not in answer.text


def test_entra_tokens_are_fetched_once_and_sent_as_bearer(gateway, azure, add_azure, recorded):
    add_azure(credential=fa.ENTRA_CREDENTIAL, auth="entra", authority=azure.url + "/entra")
    secret = key_services.create_key(name="k")[1]
    for _ in range(2):
        azure.enqueue(fo.response("entra ok"))
        answer = client(gateway, secret).responses.create(model=OPENAI_MODEL, input="hi")
        assert answer.output_text == "entra ok"
    assert azure.token_requests == 1
    for seen in calls(azure):
        headers = headers_of(seen)
        assert headers["authorization"].removeprefix("Bearer ") in azure.issued
        assert "api-key" not in headers


def test_a_refused_entra_secret_is_a_502(gateway, azure, add_azure):
    credential = fa.ENTRA_CREDENTIAL.replace(fa.CLIENT_SECRET, "wrong-secret")
    add_azure(credential=credential, auth="entra", authority=azure.url + "/entra")
    secret = key_services.create_key(name="k")[1]
    answer = httpx.post(gateway.url + "/v1/responses", json={"model": OPENAI_MODEL, "input": "x"},
                        headers={"authorization": f"Bearer {secret}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 502
    assert "token endpoint of provider 'azure-eu' refused" in answer.text
    assert "AADSTS7000215" in answer.text and "wrong-secret" not in answer.text


def test_options_are_checked_when_saved(transactional_db):
    for options, said in [({"auth": "oauth"}, "auth"), ({"region": "x"}, "no option"),
                          ({"api_version": ""}, "api_version")]:  # fmt: skip
        with pytest.raises(ValueError, match=said):
            provider_services.upsert_provider(
                name="a", kind="azure", base_url="https://x.example", credential="k",
                options=options,
            )  # fmt: skip
    with pytest.raises(ValueError, match="tenant_id"):
        provider_services.upsert_provider(
            name="a", kind="azure", base_url="https://x.example", credential='{"a": 1}',
            options={"auth": "entra"},
        )  # fmt: skip
