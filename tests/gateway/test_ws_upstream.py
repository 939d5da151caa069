"""Codex's websocket mode against a provider that serves Responses over a websocket itself.

The gateway holds one upstream socket per client socket and relays frames both ways
unchanged; each response.create is still authorized, admitted, priced and recorded on its
own. A provider without one (or whose socket cannot be opened) is bridged to HTTP SSE.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async

from tests.fakes import OPENAI_CREDENTIAL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.gateway.test_openai_e2e import cost, frames_until_done, ws_url

pytestmark = pytest.mark.e2e


@pytest.fixture
def ws_key(openai_provider, make_openai_key):
    openai_provider.websockets = True
    openai_provider.save()  # bumps the policy generation: the gateway sees it at once

    def make(**policy) -> str:
        return make_openai_key(**policy)

    return make


def upgrade_headers(fake) -> list[dict]:
    return [
        {name.lower(): value for name, value in r.headers}
        for r in fake.requests
        if r.method == "GET"
    ]


async def test_frames_go_through_the_providers_own_websocket(gateway, fake, ws_key, recorded):
    secret = await sync_to_async(ws_key)()
    fake.enqueue(
        fo.function_call(input_tokens=200, output_tokens=20),
        fo.response("All done.", input_tokens=260, cached_tokens=200, output_tokens=9),
    )
    headers = {"Authorization": f"Bearer {secret}", "x-codex-turn-state": "ts-1"}
    base = {"model": OPENAI_MODEL, "store": False, "tools": [], "stream": True}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        warm_up = {"type": "response.create", **base, "generate": False, "input": []}
        await socket.send(orjson.dumps(warm_up))
        assert (await frames_until_done(socket))[-1]["response"]["usage"]["input_tokens"] == 0
        ask = {"type": "message", "role": "user", "content": "run echo hi"}
        turn = {"type": "response.create", **base, "input": [ask]}
        await socket.send(orjson.dumps(turn))
        first = await frames_until_done(socket)
        call = first[-1]["response"]["output"][0]
        follow_up = {
            "type": "response.create", **base,
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "hi"}],
            "previous_response_id": first[-1]["response"]["id"],
        }  # fmt: skip
        await socket.send(orjson.dumps(follow_up))
        second = await frames_until_done(socket)
        assert second[-1]["response"]["output"][0]["content"][0]["text"] == "All done."
    # Every frame went to the provider's socket as the client sent it: the follow-up kept its
    # previous_response_id and only the new input, since the provider holds the state.
    assert fake.ws_frames == [warm_up, turn, follow_up]
    assert fake.openai.ws_connections == 1  # one upstream socket for the whole connection
    assert [r.method for r in fake.requests] == ["GET"]  # nothing bridged to HTTP
    (upgrade,) = upgrade_headers(fake)
    assert upgrade["authorization"] == f"Bearer {OPENAI_CREDENTIAL}"
    assert upgrade["x-codex-turn-state"] == "ts-1"
    assert all(secret not in value for value in upgrade.values())
    # The warm-up generated nothing and is not billed; the two turns are, as the fake reported.
    events = await sync_to_async(recorded)(2)
    assert [(e.input_tokens, e.cache_read_tokens, e.output_tokens) for e in events] == [
        (200, 0, 20),
        (60, 200, 9),
    ]
    assert events[1].cost_usd == cost(60, 200, 9)
    assert not any(e.partial for e in events)


async def test_refusals_are_error_events_and_nothing_reaches_the_provider(gateway, fake, ws_key):
    secret = await sync_to_async(ws_key)(budget_usd=Decimal(0), allowed_models=["gpt-test-*"])
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(
            orjson.dumps({"type": "response.create", "model": OPENAI_MODEL, "input": "x"})
        )
        event = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        assert event["status"] == 429 and event["error"]["code"] == "insufficient_quota"
        await socket.send(orjson.dumps({"type": "response.create", "model": "gpt-other"}))
        event = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        assert event["status"] == 403
    assert fake.ws_frames == []


async def test_a_provider_without_a_websocket_is_bridged_to_http(
    gateway, fake, ws_key, recorded, caplog
):
    fake.openai.websockets = False  # its GET /v1/responses is a 404
    secret = await sync_to_async(ws_key)()
    fake.enqueue(fo.response("Bridged.", input_tokens=30, output_tokens=4))
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(
            orjson.dumps({"type": "response.create", "model": OPENAI_MODEL, "input": "x"})
        )
        events = await frames_until_done(socket)
        assert events[-1]["type"] == "response.completed"
    assert [r.method for r in fake.requests] == ["GET", "POST"]  # tried once, then HTTP
    assert fake.requests[1].json["stream"] is True
    (event,) = await sync_to_async(recorded)(1)
    assert (event.input_tokens, event.output_tokens) == (30, 4)
    # The failed upgrade is logged without the request headers it carried.
    assert "no Responses websocket (WSServerHandshakeError: 404" in caplog.text
    assert OPENAI_CREDENTIAL not in caplog.text and secret not in caplog.text


async def test_a_hang_up_mid_response_settles_partial_and_drops_the_upstream_socket(
    gateway, fake, ws_key, recorded
):
    secret = await sync_to_async(ws_key)()
    fake.enqueue(fo.response("slow " * 50, input_tokens=77, output_tokens=100, chunks=50,
                             delay=0.05))  # fmt: skip
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(
            orjson.dumps({"type": "response.create", "model": OPENAI_MODEL, "input": "x"})
        )
        first = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        assert first["type"] == "response.created"
    (event,) = await sync_to_async(recorded)(1)
    assert event.partial and event.error == "client disconnected"
    assert fake.ws_frames and len(fake.ws_frames) == 1


async def test_a_socket_the_provider_closed_between_turns_is_replaced(
    gateway, fake, ws_key, recorded
):
    fake.openai.ws_one_response = True  # the provider hangs up after every response
    secret = await sync_to_async(ws_key)()
    fake.enqueue(
        fo.response("One.", input_tokens=11, output_tokens=1),
        fo.response("Two.", input_tokens=12, output_tokens=2),
    )
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        for expected in ("One.", "Two."):
            frame = {"type": "response.create", "model": OPENAI_MODEL, "input": "x"}
            await socket.send(orjson.dumps(frame))
            events = await frames_until_done(socket)
            assert events[-1]["type"] == "response.completed"
            assert events[-1]["response"]["output"][0]["content"][0]["text"] == expected
    assert fake.openai.ws_connections == 2 and len(fake.ws_frames) == 2
    events = await sync_to_async(recorded)(2)
    assert sorted((e.input_tokens, e.partial) for e in events) == [(11, False), (12, False)]
