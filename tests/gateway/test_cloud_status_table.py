"""The status table (forwarding.STATUS_TABLE, docs/providers.md) for every cloud kind: what
the client gets for each provider status, in its own protocol's shape, with the provider's
status in x-llmproxy-upstream-status and the allowed headers passed on."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from accounts import services as key_services
from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e

# provider status → the client's status (Anthropic clients, OpenAI clients)
ROWS = {
    401: (502, 502), 403: (502, 502), 404: (404, 404), 408: (504, 504), 413: (413, 413),
    429: (429, 429), 500: (502, 502), 502: (502, 502), 503: (503, 503), 504: (504, 504),
    529: (529, 503),
}  # fmt: skip
KINDS = ["bedrock", "vertex", "azure"]


@pytest.fixture
def cloud(request, transactional_db):
    """(the fake, its protocol) for the kind under test, with its provider added."""
    kind = request.param
    fake = request.getfixturevalue(kind)
    request.getfixturevalue(f"{kind}_provider")
    return fake, "openai" if kind == "azure" else "anthropic"


@pytest.mark.parametrize("cloud", KINDS, indirect=True)
@pytest.mark.parametrize("status", sorted(ROWS))
def test_each_provider_status(gateway, cloud, recorded, status):
    fake, protocol = cloud
    headers = {"retry-after": "7"} if status == 429 else {}
    secret = key_services.create_key(name="k", budget_usd=Decimal(5))[1]
    if protocol == "anthropic":
        fake.enqueue(fu.error(status, "api_error", "the cloud says no", headers=headers))
        body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        answer = httpx.post(gateway.url + "/v1/messages", json=body,
                            headers={"x-api-key": secret}, timeout=30)  # fmt: skip
    else:
        fake.enqueue(fo.openai_error(status, "server_error", "the cloud says no", headers=headers))
        answer = httpx.post(gateway.url + "/v1/responses", json={"model": OPENAI_MODEL,
                            "input": "x"}, headers={"authorization": f"Bearer {secret}"},
                            timeout=30)  # fmt: skip
    expected = ROWS[status][0 if protocol == "anthropic" else 1]
    assert answer.status_code == expected, answer.text
    assert answer.headers["x-llmproxy-upstream-status"] == str(status)
    error = answer.json()
    if protocol == "anthropic":
        assert error["type"] == "error" and isinstance(error["error"]["type"], str)
    assert "the cloud says no" in error["error"]["message"] or status == 401
    if status == 429:
        assert answer.headers["retry-after"] == "7"
    if status in (401, 403):
        assert "Your own key is fine" in error["error"]["message"]
    (event,) = recorded(1)
    assert event.cost_usd == 0 and event.status == expected
