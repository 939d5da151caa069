"""A Codex compaction the provider refuses as too large (413) is compacted in chunks.

The fake provider refuses bodies over 1 MiB, as a provider's front does. The histories have
the shape of the captured Codex remote compaction (tests/samples/
codex_remote_compaction_trigger_request.json: its headers, its developer and user messages,
exec_command calls and their outputs, the trailing compaction_trigger), grown to 5 MiB.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import httpx
import orjson
import pytest
import websockets

from llmproxy.gateway import compaction
from tests.fakes import OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.samples import captured_request

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
CAP = MiB
SAMPLE = captured_request("codex_remote_compaction_trigger_request.json")
TRIGGER = {"type": "compaction_trigger"}


@pytest.fixture(autouse=True)
def _no_learned_caps():
    compaction.forget_caps()
    yield
    compaction.forget_caps()


@pytest.fixture
def capped(fake):
    """The fake refuses bodies over 1 MiB; it answers every compaction with one item."""
    fake.body_cap = CAP
    fake.openai.default = fo.response(compaction=True, input_tokens=1000, output_tokens=100)
    return fake


def history(rounds: int = 100, tag: str = "a", output_bytes: int = 48 * 1024) -> list[dict]:
    """The sample's opening items, then ``rounds`` tool turns (reasoning, an exec_command
    call, its output, a reply), every fifth with two calls in parallel."""
    opening = [i for i in SAMPLE["body"]["input"][:4]]
    items = list(opening)
    for n in range(rounds):
        name = f"{tag}{n}"
        calls = [f"call_{name}", f"call_{name}b"] if n % 5 == 4 else [f"call_{name}"]
        items.append({"type": "reasoning", "id": f"rs_{name}", "summary": [],
                      "encrypted_content": "r" * 200})  # fmt: skip
        for call in calls:
            items.append({"type": "function_call", "id": f"fc_{call}", "name": "exec_command",
                          "arguments": '{"cmd": "cat big.log"}', "call_id": call})  # fmt: skip
        for call in calls:
            text = (f"{call}: " + "log line of output\n" * (output_bytes // 19))[:output_bytes]
            items.append({"type": "function_call_output", "id": f"fco_{call}",
                          "call_id": call, "output": text})  # fmt: skip
        items.append({"type": "message", "id": f"msg_{name}", "role": "assistant",
                      "content": [{"type": "output_text", "text": f"done {name}"}]})  # fmt: skip
    return items


def trigger_body(items: list[dict]) -> bytes:
    body = {**SAMPLE["body"], "model": OPENAI_MODEL, "input": [*items, TRIGGER]}
    return orjson.dumps(body)


def codex_headers(secret: str) -> dict[str, str]:
    skipped = {"authorization", "host", "content-length"}
    headers = {k: v for k, v in SAMPLE["headers"] if k.lower() not in skipped}
    return {**headers, "Authorization": f"Bearer {secret}"}


def compact(gateway, secret: str, body: bytes) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/responses", content=body,
                      headers=codex_headers(secret), timeout=60)  # fmt: skip


def final_output(response: httpx.Response) -> list[dict]:
    for block in response.text.split("\n\n"):
        if "event: response.completed" in block:
            data = block.split("data: ", 1)[1]
            return orjson.loads(data)["response"]["output"]
    raise AssertionError(f"no response.completed in {response.text[:300]!r}")


def calls(fake) -> list[dict]:
    return [r.json for r in fake.requests if r.method == "POST"]


def sizes(fake) -> list[int]:
    return [len(r.body) for r in fake.requests if r.method == "POST"]


def name_of(item: dict) -> str:
    return item.get("id") or item["type"]


def covered(chunks: list[dict], items: list[dict]) -> list[str]:
    """The items the chunk calls carried (they arrive in any order), in history order."""
    where = {name_of(item): index for index, item in enumerate(items)}
    chunks = sorted(chunks, key=lambda chunk: where[name_of(chunk["input"][0])])
    return [name_of(i) for chunk in chunks for i in chunk["input"][:-1]]


def assert_whole_units(items: list[dict]) -> None:
    """No tool call without its output (or the reverse), no reasoning without its item."""
    called = {i["call_id"] for i in items if i["type"] == "function_call"}
    answered = {i["call_id"] for i in items if i["type"] == "function_call_output"}
    assert called == answered
    for index, item in enumerate(items):
        if item["type"] == "reasoning":
            assert items[index + 1]["type"] == "function_call"


def test_a_5_mib_compaction_succeeds_through_chunks(gateway, capped, make_openai_key, recorded):
    secret = make_openai_key()
    items = history()
    body = trigger_body(items)
    assert len(body) > 5 * MiB
    response = compact(gateway, secret, body)
    assert response.status_code == 200, response.text[:500]
    (item,) = final_output(response)  # exactly one compaction item, as Codex requires
    assert item["type"] == "compaction"
    # It summarises the history from its first item to its last, through the chunks'.
    assert item["encrypted_content"] == f"opaque-summary:{name_of(items[0])}..msg_a99"
    sent = list(zip(calls(capped), sizes(capped), strict=True))
    assert sent[0][1] == max(sizes(capped)) > 5 * MiB  # tried whole first, refused
    served = [data for data, size in sent if size <= CAP]
    refused = [data for data, size in sent if size > CAP]
    *chunks, final = served
    assert len(chunks) >= 5
    assert covered(chunks, items) == [name_of(i) for i in items]  # every item once
    for chunk in [*chunks, *refused]:
        assert chunk["input"][-1] == TRIGGER and chunk["tools"] == sent[0][0]["tools"]
        assert_whole_units(chunk["input"][:-1])
    # The client's call compacts the chunks' compaction items, in history order.
    assert [i["type"] for i in final["input"]] == ["compaction"] * len(chunks) + [
        "compaction_trigger"
    ]
    # One usage record per chunk call that was answered, and the client's call; the 413s
    # cost nothing and record nothing.
    events = recorded(len(chunks) + 1)
    assert all(e.kind == "compaction" and e.status == 200 for e in events)
    (own,) = [e for e in events if e.request_id == response.headers["x-llmproxy-request-id"]]
    assert own.attempts == 2  # the whole history (413), then its chunks' items
    assert len({e.request_id for e in events}) == len(events)


def test_the_learned_cap_is_used_by_the_next_compaction(gateway, capped, make_openai_key, recorded):
    secret = make_openai_key()
    first = compact(gateway, secret, trigger_body(history(tag="a")))
    assert first.status_code == 200
    first_calls = len(calls(capped))
    first_refused = sum(size > CAP for size in sizes(capped))
    assert first_refused >= 3  # the whole body, a 4 MiB chunk, a 2 MiB chunk
    capped.requests.clear()
    second = compact(gateway, secret, trigger_body(history(tag="b")))
    assert second.status_code == 200
    (item,) = final_output(second)
    assert item["type"] == "compaction"
    # Straight to 1 MiB chunks: no 413 paid again, fewer calls.
    assert all(size <= CAP for size in sizes(capped))
    assert len(calls(capped)) <= first_calls - first_refused
    recorded(first_calls - first_refused + len(calls(capped)))


def test_a_chunk_that_learns_a_smaller_cap_resplits_the_chunks_not_sent_yet(
    gateway, capped, make_openai_key, settings
):
    settings.LLMPROXY_COMPACTION_CONCURRENCY = 1  # one sibling after the other
    secret = make_openai_key()
    response = compact(gateway, secret, trigger_body(history()))
    assert response.status_code == 200
    # The whole history, the first 4 MiB chunk, the first 2 MiB chunk: each taught a
    # smaller cap, and every chunk after was cut to it before it was sent.
    refused = [size for size in sizes(capped) if size > CAP]
    assert len(refused) == 3
    assert refused[0] > 4 * MiB > refused[1] > 2 * MiB > refused[2] > CAP


def test_the_fan_out_shares_one_budget_of_calls(gateway, capped, make_openai_key, settings):
    settings.LLMPROXY_COMPACTION_MAX_CALLS = 4
    secret = make_openai_key()
    response = compact(gateway, secret, trigger_body(history()))
    assert response.status_code == 413
    assert "LLMPROXY_COMPACTION_MAX_CALLS" in response.json()["error"]["message"]
    assert response.headers["x-should-retry"] == "false"
    assert len(calls(capped)) <= 1 + 4  # the whole history, then the fan-out's four


def test_compactions_of_one_history_share_their_common_chunk_calls(
    gateway, capped, make_openai_key, recorded
):
    secret = make_openai_key()
    items = history()
    assert compact(gateway, secret, trigger_body(items)).status_code == 200  # learns 1 MiB
    alone = len(calls(capped)) - sum(size > CAP for size in sizes(capped)) - 1
    capped.requests.clear()
    capped.openai.default = fo.response(
        compaction=True, input_tokens=1000, output_tokens=100, head_delay=0.3
    )
    longer = [*items, {"type": "message", "role": "user", "id": "msg_more",
                       "content": [{"type": "input_text", "text": "one more thing"}]}]  # fmt: skip
    barrier = threading.Barrier(2)
    answers: list[httpx.Response] = []

    def one(body: bytes) -> None:
        barrier.wait()
        answers.append(compact(gateway, secret, body))

    threads = [threading.Thread(target=one, args=(trigger_body(h),)) for h in (items, longer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [a.status_code for a in answers] == [200, 200]
    bodies = [r.body for r in capped.requests if r.method == "POST"]
    assert len(bodies) == len(set(bodies))
    # Both histories' chunks, less the ones they have in common, and two final calls.
    assert len(bodies) < 2 * alone + 2


def test_a_small_compaction_under_the_learned_cap_goes_whole(gateway, capped, make_openai_key):
    secret = make_openai_key()
    assert compact(gateway, secret, trigger_body(history(tag="a"))).status_code == 200
    capped.requests.clear()
    small = compact(gateway, secret, trigger_body(history(rounds=3, tag="s")))
    assert small.status_code == 200 and len(calls(capped)) == 1


def test_five_identical_compactions_in_flight_make_each_chunk_call_once(
    gateway, capped, make_openai_key, recorded
):
    secret = make_openai_key()
    capped.openai.default = fo.response(
        compaction=True, input_tokens=1000, output_tokens=100, head_delay=0.3
    )
    body = trigger_body(history())
    barrier = threading.Barrier(5)
    answers: list[httpx.Response] = []

    def one() -> None:
        barrier.wait()
        answers.append(compact(gateway, secret, body))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("x-llmproxy-shared") == "true" for a in answers) == 4
    bodies = [r.body for r in capped.requests if r.method == "POST"]
    assert len(bodies) == len(set(bodies))  # no call was made twice
    assert sum(len(b) > 5 * MiB for b in bodies) == 1  # the whole history, once
    served = sum(len(b) <= CAP for b in bodies)
    assert len(recorded(served)) == served  # the followers cost nothing


def test_units_keep_tool_calls_with_their_outputs():
    call = {"type": "function_call", "call_id": "a"}
    other = {"type": "function_call", "call_id": "b"}
    items = [
        {"type": "message", "id": "m1"},
        {"type": "reasoning", "id": "r1"},
        call,
        other,  # two calls in parallel, then both outputs
        {"type": "function_call_output", "call_id": "a"},
        {"type": "message", "id": "m2"},
        {"type": "function_call_output", "call_id": "b"},
        {"type": "custom_tool_call", "call_id": "c"},
        {"type": "custom_tool_call_output", "call_id": "c"},
        {"type": "function_call", "call_id": "never answered"},
        {"type": "message", "id": "m3"},
    ]
    found = [len(unit.items) for unit in compaction.units(items)]
    assert found == [1, 6, 2, 1, 1]
    # Packed under a cap no unit fits, each unit goes alone, none is cut.
    assert [len(c) for c in compaction.pack(compaction.units(items), 10, 5)] == [1] * 5


def test_the_cap_halves_down_to_the_floor():
    assert compaction.smaller_cap(None, 5 * MiB) == 4 * MiB
    assert compaction.smaller_cap(4 * MiB, 4 * MiB - 10) == 2 * MiB
    assert compaction.smaller_cap(2 * MiB, 3 * MiB) == 2 * MiB  # a sibling already halved it
    assert compaction.smaller_cap(None, 100 * 1024) == 64 * 1024
    assert compaction.smaller_cap(64 * 1024, 64 * 1024) is None


async def test_the_learned_cap_is_shared_and_expires(settings):
    store = compaction.caps()
    assert await store.get("1:m:/v1/responses") is None
    assert await store.lower("1:m:/v1/responses", 2 * MiB) == 2 * MiB
    assert await store.lower("1:m:/v1/responses", 4 * MiB) == 2 * MiB  # only ever lowered
    assert await store.lower("1:m:/v1/responses", MiB) == MiB
    assert await store.get("1:m:/v1/responses") == MiB
    assert await store.get("2:m:/v1/responses") is None


def test_chunk_calls_are_admitted_and_billed(gateway, capped, make_openai_key, recorded):
    secret = make_openai_key(budget_usd=Decimal(100))
    capped.openai.default = fo.response(compaction=True, input_tokens=200_000, output_tokens=900)
    response = compact(gateway, secret, trigger_body(history()))
    assert response.status_code == 200
    served = sum(size <= CAP for size in sizes(capped))
    events = recorded(served)
    each = (200_000 * Decimal("1.25") + 900 * 10) / Decimal(10**6)
    assert [e.cost_usd for e in events] == [each] * served
    # The chunks' cost was on the budget when the client's own call was admitted.
    left = Decimal(response.headers["x-llmproxy-budget-remaining-usd"])
    assert left <= 100 - (served - 1) * each


def test_a_budget_that_cannot_pay_for_every_chunk_gets_a_clean_error(
    gateway, capped, make_openai_key, recorded, settings
):
    settings.LLMPROXY_COMPACTION_CONCURRENCY = 1
    # Each chunk reserves about $1.72 (a 1 MiB prompt and 128k output tokens) and costs $1.
    secret = make_openai_key(budget_usd=Decimal(5))
    capped.openai.default = fo.response(compaction=True, input_tokens=0, output_tokens=100_000)
    response = compact(gateway, secret, trigger_body(history()))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
    events = recorded()
    paid = [e for e in events if e.cost_usd > 0]
    assert len(paid) == 4 and all(e.cost_usd == 1 for e in paid)
    assert sum(e.cost_usd for e in events) <= 5
    (own,) = [e for e in events if e.status != 200]  # the client's call
    assert own.status == 429 and own.cost_usd == 0 and "budget" in own.error


def test_the_compact_endpoint_falls_back_too(gateway, capped, make_openai_key, recorded):
    secret = make_openai_key()
    items = history(rounds=60)
    body = {"model": OPENAI_MODEL, "input": items, "instructions": "compact this",
            "tools": [], "parallel_tool_calls": False}  # fmt: skip
    response = httpx.post(
        gateway.url + "/v1/responses/compact", json=body,
        headers=codex_headers(secret), timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text[:300]
    (item,) = response.json()["output"]
    assert item["encrypted_content"] == f"opaque-summary:{name_of(items[0])}..msg_a59"
    sent = calls(capped)
    assert all(c["instructions"] == "compact this" for c in sent)
    assert all(r.path == "/v1/responses/compact" for r in capped.requests)


def test_a_413_to_a_small_body_is_passed_on(gateway, capped, make_openai_key, recorded):
    capped.body_cap = 100
    secret = make_openai_key()
    response = compact(gateway, secret, trigger_body(history(rounds=1, output_bytes=100)))
    assert response.status_code == 413
    assert response.headers["x-llmproxy-upstream-status"] == "413"
    assert len(calls(capped)) == 1
    (event,) = recorded(1)
    assert event.status == 413 and event.cost_usd == 0


def test_a_turn_that_is_not_a_compaction_gets_the_413(gateway, capped, make_openai_key):
    secret = make_openai_key()
    body = {**SAMPLE["body"], "model": OPENAI_MODEL, "input": history(rounds=30)}
    response = compact(gateway, secret, orjson.dumps(body))
    assert response.status_code == 413
    assert len(calls(capped)) == 1


async def test_a_replayed_history_on_the_websocket_bridge_falls_back(
    gateway, fake, make_openai_key, recorded
):
    from asgiref.sync import sync_to_async

    secret = await sync_to_async(make_openai_key)()
    headers = {
        "Authorization": f"Bearer {secret}",
        "openai-beta": "responses_websockets=2026-02-06",
    }
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    base = {"model": OPENAI_MODEL, "store": False, "tools": [], "stream": True}
    items = history(rounds=40)
    fake.enqueue(fo.response("Worked through the logs.", input_tokens=900_000))
    async with websockets.connect(url, additional_headers=headers, max_size=None) as socket:
        # The first turn goes whole (no cap yet); then the provider's limit comes in.
        await socket.send(orjson.dumps({"type": "response.create", **base, "input": items}))
        first = await frames(socket)
        assert first[-1]["type"] == "response.completed"
        fake.body_cap = CAP
        fake.openai.default = fo.response(compaction=True, input_tokens=1000, output_tokens=100)
        previous = first[-1]["response"]["id"]
        frame = {"type": "response.create", **base, "input": [TRIGGER],
                 "previous_response_id": previous}  # fmt: skip
        await socket.send(orjson.dumps(frame))
        second = await frames(socket)
    assert second[-1]["type"] == "response.completed", second[-1]
    (item,) = second[-1]["response"]["output"]
    assert item["type"] == "compaction"
    sent = [r for r in fake.requests if r.method == "POST"]
    assert len(sent[1].body) > CAP  # the replayed history, refused whole
    served = [r.json for r in sent[2:] if len(r.body) <= CAP]
    replayed = [*items, first[-1]["response"]["output"][0]]  # its input and its output
    assert covered(served[:-1], replayed) == [name_of(i) for i in replayed]
    await sync_to_async(recorded)(1 + len(served))


async def frames(socket) -> list[dict]:
    events = []
    while True:
        event = orjson.loads(await asyncio.wait_for(socket.recv(), 60))
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "error"):
            return events
