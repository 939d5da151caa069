"""Bad client input is a 400 in the client's protocol (or an error frame), never a 500, and
never leaves a slot or reservation held."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async

from accounts import keys
from llmproxy.gateway import policy as policy_module
from llmproxy.gateway.policy import policies
from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu
from tests.gateway.test_openai_e2e import frames_until_done, ws_url

pytestmark = pytest.mark.e2e


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [300, 1100, 50_000])
def test_deep_nesting_in_a_skipped_field_is_a_400(gateway, fake, make_key, levels):
    secret = make_key()
    body = f'{{"model": "{MODEL}", "max_tokens": 5, "messages": {deep(levels)}}}'
    answer = httpx.post(
        gateway.url + "/v1/messages", content=body,
        headers={"x-api-key": secret, "content-type": "application/json"},
    )  # fmt: skip
    if levels == 300:
        assert answer.status_code == 200  # deep, but within what the decoders take
        return
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "nests deeper" in answer.json()["error"]["message"]
    assert fake.requests == []


def test_a_rewritten_body_deeper_than_orjson_writes_still_goes_up(
    gateway, fake, make_openai_key, recorded
):
    """Codex's refused web_search is taken out, so the body is re-serialized: a body nested
    deeper than orjson serializes (254) is written by the standard library instead."""
    secret = make_openai_key()
    body = (
        f'{{"model": "{OPENAI_MODEL}", "tools": [{{"type": "web_search"}}], '
        f'"input": [{{"role": "user", "content": "x", "meta": {deep(400)}}}]}}'
    )
    answer = httpx.post(
        gateway.url + "/v1/responses", content=body,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert fake.requests[0].json["tools"] == []
    assert recorded(1)[0].status == 200


def test_a_refused_tool_beside_a_tool_whose_type_is_a_list(gateway, fake, make_openai_key):
    secret = make_openai_key()
    body = {"model": OPENAI_MODEL, "input": "x", "tools": [{"type": "web_search"}, {"type": ["x"]}]}
    answer = httpx.post(
        gateway.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {secret}"}
    )
    assert answer.status_code == 200, answer.text
    assert fake.requests[0].json["tools"] == [{"type": ["x"]}]  # only the refused one is gone


BAD_FRAMES = [
    b"not json",
    b"[]",
    b'{"type": "response.cancel"}',
    b'{"type": "response.create", "model": 5}',
    b'{"type": "response.create", "tools": [{"type": "web_search"}, {"type": ["x"]}]}',
    b'{"type": "response.create", "input": 5}',
    b'{"type": "response.create", "previous_response_id": "resp_known", "input": 5}',
    b'{"type": "response.create", "model": "MODEL", "stream": "yes"}',
    b'{"type": "response.create", "model": "MODEL", "input": ' + deep(2000).encode() + b"}",
]


@pytest.mark.parametrize("provider_websockets", [True, False], ids=["upstream", "bridge"])
async def test_every_bad_frame_gets_an_answer_and_the_socket_stays_usable(
    gateway, fake, openai_provider, make_openai_key, provider_websockets
):
    openai_provider.websockets = provider_websockets
    await sync_to_async(openai_provider.save)()
    secret = await sync_to_async(make_openai_key)(max_concurrent=1)
    fake.set_default(fo.response("fine", input_tokens=3, output_tokens=1))
    good = {"type": "response.create", "model": OPENAI_MODEL, "input": "x"}
    headers = {"Authorization": f"Bearer {secret}"}
    async with websockets.connect(ws_url(gateway), additional_headers=headers) as socket:
        await socket.send(orjson.dumps(good))
        first = await frames_until_done(socket)
        known = first[-1]["response"]["id"]
        for frame in BAD_FRAMES:
            frame = frame.replace(b"MODEL", OPENAI_MODEL.encode())
            frame = frame.replace(b"resp_known", known.encode())
            frame = frame.replace(
                b'"type": "response.create"',
                b'"type": "response.create", "model": "' + OPENAI_MODEL.encode() + b'"',
                1,
            )
            await socket.send(frame)
            last = (await frames_until_done(socket))[-1]  # an answer, whatever the frame
            if last["type"] == "error":
                assert 400 <= last["status"] < 500, (frame, last)
            else:
                assert last["type"] == "response.completed", (frame, last)
            # the key allows one call at a time: a leaked slot would refuse the next one
            await socket.send(orjson.dumps(good))
            events = await frames_until_done(socket)
            assert events[-1]["type"] == "response.completed", (frame, events[-1])


async def test_count_tokens_and_model_lists_count_against_the_request_rate(gateway, fake, make_key):
    secret = await sync_to_async(make_key)(rpm=2)
    fake.set_default(fu.count_tokens(input_tokens=9))
    async with httpx.AsyncClient(base_url=gateway.url, headers={"x-api-key": secret}) as http:
        counted = await http.post(
            "/v1/messages/count_tokens", json={"model": MODEL, "messages": []}
        )
        listed = await http.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
        third = await http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": []})
    assert (counted.status_code, listed.status_code) == (200, 200)
    assert third.status_code == 429 and third.json()["error"]["type"] == "rate_limit_error"


async def test_a_flood_of_unknown_keys_never_evicts_a_valid_one(
    gateway, fake, make_key, monkeypatch
):
    monkeypatch.setattr(policy_module, "_MAX_UNKNOWN", 100)  # a small cache, a big flood
    secret = await sync_to_async(make_key)()
    fake.set_default(fu.text("ok"))
    body = {"model": MODEL, "max_tokens": 5, "messages": []}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (
            await http.post("/v1/messages", json=body, headers={"x-api-key": secret})
        ).is_success
    for start in range(0, 600, 100):
        # A client per wave: no connection sits idle in a pool between waves, where a slow
        # host could let the server's keep-alive timeout close it as the next wave reuses it
        # (a reset the client sees, not a refusal).
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            flood = [
                http.post("/v1/messages", json=body, headers={"x-api-key": f"llmp-made-up-{i}"})
                for i in range(start, start + 100)
            ]
            assert {a.status_code for a in await asyncio.gather(*flood)} == {401}
    assert len(policies._unknown) == 100  # the oldest unknown keys were forgotten
    assert keys.key_digest(secret) in policies._keys  # the valid key never was
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (
            await http.post("/v1/messages", json=body, headers={"x-api-key": secret})
        ).is_success
