"""One settlement path: however a call ends, it is settled once, and settling cannot fail."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from billing.models import Price
from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e


def post(gateway, path: str, secret: str, body: dict) -> httpx.Response:
    return httpx.post(
        gateway.url + path, json=body, headers={"authorization": f"Bearer {secret}"}, timeout=30
    )


def test_usage_settle_cannot_price_is_charged_its_reservation_and_frees_the_slot(
    gateway, fake, openai_provider, make_openai_key, recorded
):
    """A call whose cost cannot be computed (a price row holding a signalling NaN, which the
    database took) still yields one usage record, charged the most the call was allowed to
    cost, and releases the key's only concurrency slot."""
    Price.objects.filter(model_pattern="gpt-test-*").update(tool_prices={"web_search": "sNaN"})
    secret = make_openai_key(max_concurrent=1, budget_usd=Decimal(5))
    call = {"type": "web_search_call", "id": "ws_1", "status": "completed"}
    fake.enqueue(fo.response("ok", items=[call]), fo.response("again"))
    body = {"model": OPENAI_MODEL, "input": "hi", "max_output_tokens": 100}
    first = post(gateway, "/v1/responses", secret, body)
    assert first.status_code == 200 and first.json()["output"][-1]["type"] == "web_search_call"
    second = post(gateway, "/v1/responses", secret, body)
    assert second.status_code == 200, second.text  # the slot was released
    unpriced, normal = recorded(2)
    assert unpriced.estimated and "usage unreadable (InvalidOperation" in unpriced.error
    # The reservation: the body's bytes / 3 at the input rate, and 100 output tokens.
    prompt = len(fake.requests[0].body) // 3
    reservation = (prompt * Decimal("1.25") + 100 * Decimal(10)) / Decimal(10**6)
    assert unpriced.cost_usd == reservation.quantize(Decimal("0.00000001"))
    assert not normal.estimated and normal.error == ""


def test_an_output_item_with_an_odd_container_id_is_still_counted(
    gateway, fake, make_openai_key, recorded
):
    secret = make_openai_key()
    odd = {"type": "code_interpreter_call", "id": {"x": 1}, "container_id": {"y": 2}}
    fake.enqueue(fo.response("ok", items=[odd, dict(odd)]))
    answer = post(gateway, "/v1/responses", secret, {"model": OPENAI_MODEL, "input": "hi"})
    assert answer.status_code == 200
    (event,) = recorded(1)
    assert event.tool_calls == {"1g": 2} and event.error == ""
    assert event.cost_usd == (10 * Decimal("1.25") + 5 * 10) / Decimal(10**6) + Decimal("0.06")


def test_every_way_a_call_ends_records_exactly_one_event(gateway, fake, make_key, recorded):
    secret = make_key()
    base = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]}
    fake.enqueue(
        fu.text("whole"),  # answered to the end, not streamed
        fu.text("whole", chunks=4),  # answered to the end, streamed
        fu.midstream_error(after_events=2),  # the provider sends an error event
        fu.drop_after(events=2),  # the provider's connection breaks mid-stream
        fu.error(529, "overloaded_error", "busy"),  # an error answer
    )
    statuses = [
        post(gateway, "/v1/messages", secret, base).status_code,
        post(gateway, "/v1/messages", secret, {**base, "stream": True}).status_code,
        post(gateway, "/v1/messages", secret, {**base, "stream": True}).status_code,
        post(gateway, "/v1/messages", secret, {**base, "stream": True}).status_code,
        post(gateway, "/v1/messages", secret, base).status_code,
    ]
    assert statuses == [200, 200, 200, 200, 529]
    events = recorded(5)
    ids = {e.request_id for e in events}
    assert len(ids) == 5
    assert [e.partial for e in events] == [False, False, False, True, False]
    assert [e.status for e in events] == [200, 200, 200, 200, 529]
