"""Routing: a model goes to a provider of its endpoint's protocol and is priced by that kind;
unknown proxy paths answer in the protocol's own error shape."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from billing.models import Price
from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo

pytestmark = pytest.mark.e2e


def test_a_model_of_another_kind_is_a_404_in_the_clients_protocol(
    gateway, fake, provider, make_openai_key, recorded
):
    secret = make_openai_key()
    messages = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": OPENAI_MODEL, "max_tokens": 5, "messages": []},
        headers={"x-api-key": secret, "anthropic-version": "2023-06-01"},
    )
    assert messages.status_code == 404
    assert messages.json()["error"]["type"] == "not_found_error"
    assert "is an openai model" in messages.json()["error"]["message"]
    responses = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": MODEL, "input": "hi"},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert responses.status_code == 404
    assert responses.json()["error"]["code"] == "model_not_found"
    assert "is an anthropic model" in responses.json()["error"]["message"]
    assert fake.requests == []  # neither went to a provider
    assert recorded() == []


def test_a_model_is_priced_by_its_providers_kind(gateway, fake, make_openai_key, recorded):
    # The same pattern priced differently per kind: the OpenAI row prices an OpenAI call.
    Price.objects.create(
        model_pattern="gpt-test-*", provider_kind="anthropic", input_per_mtok=Decimal(100),
        output_per_mtok=Decimal(100),
    )  # fmt: skip
    secret = make_openai_key()
    fake.enqueue(fo.response("ok", input_tokens=1000, output_tokens=100))
    answer = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": OPENAI_MODEL, "input": "hi"},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert answer.status_code == 200
    (event,) = recorded(1)
    assert event.cost_usd == (1000 * Decimal("1.25") + 100 * Decimal(10)) / Decimal(10**6)


@pytest.mark.parametrize(
    ("path", "headers", "shape"),
    [
        ("/v1/nothing", {"anthropic-version": "2023-06-01"}, "anthropic"),
        ("/v1/nothing", {}, "openai"),
        ("/anthropic/v1/nothing", {}, "anthropic"),
        ("/openai/v1/files", {}, "openai"),
        ("/openai/", {"anthropic-version": "2023-06-01"}, "openai"),
    ],
)
def test_unknown_proxy_paths_are_json_404s_in_the_protocols_shape(gateway, path, headers, shape):
    for method in ("GET", "POST"):
        answer = httpx.request(method, gateway.url + path, headers=headers)
        assert answer.status_code == 404, (method, path)
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()
        if shape == "anthropic":
            assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
        else:
            assert error["error"]["type"] == "invalid_request_error"
        assert path in (error["error"]["message"])


def test_the_admin_and_api_are_still_django(gateway):
    assert httpx.get(gateway.url + "/admin/login/").status_code == 200
    assert httpx.get(gateway.url + "/api/keys/").status_code in (401, 403)
