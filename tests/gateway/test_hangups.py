"""A client that hangs up still pays for what the provider generated.

Every path (Messages, Responses and Chat streams, Codex's websocket over the provider's
socket and over the HTTP bridge) is cut at every point of its answer: before the first byte,
mid-content, after the last content, and just before the usage event. Read on (the default:
LLMPROXY_ABANDONED_READ_SECONDS), the gateway records the provider's exact figure; given up at
once, it records an estimate that is never below the provider's input and the content the
client saw (one token per 3 bytes of content; the fake's tokens are 4 bytes each).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async

from tests.fakes import MODEL, OPENAI_MODEL
from tests.fakes import fake_openai as fo
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e

TOKENS = 24  # content tokens in every answer, streamed one per event
TEXT = "tok " * TOKENS  # 4 bytes a token
PROMPT = "p" * 100  # output dominates the cost, as in a coding agent's answers
DELAY = 0.02  # between the fake's events: a hang-up lands between two of them
PRICES = {"anthropic": (Decimal(3), Decimal(15)), "openai": (Decimal("1.25"), Decimal(10))}

PATHS = ["messages", "responses", "chat", "ws-upstream", "ws-bridge"]
POINTS = ["before-first-byte", "mid-content", "after-last-content", "before-usage"]


def request_body(path: str) -> bytes:
    if path == "messages":
        body = {"model": MODEL, "max_tokens": TOKENS, "stream": True,
                "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    elif path == "chat":
        body = {"model": OPENAI_MODEL, "stream": True,
                "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    else:
        body = {"model": OPENAI_MODEL, "stream": True, "max_output_tokens": TOKENS,
                "input": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    return orjson.dumps(body)


def true_input(path: str) -> int:
    """What the fake provider reports as input: about 4 bytes a token, as real tokenizers."""
    return len(request_body(path)) // 4


def answer(path: str, point: str):
    head = 0.3 if point == "before-first-byte" else 0.0
    inputs = true_input(path)
    if path == "messages":
        return fu.Reply(
            blocks=[{"type": "text", "text": TEXT}], chunks=TOKENS, delay=DELAY,
            usage={"input_tokens": inputs, "output_tokens": TOKENS}, head_delay=head,
        )  # fmt: skip
    if path == "chat":
        return fo.chat(
            TEXT, prompt_tokens=inputs, completion_tokens=TOKENS, chunks=TOKENS, delay=DELAY,
            head_delay=head,
        )  # fmt: skip
    return fo.response(
        TEXT, input_tokens=inputs, output_tokens=TOKENS, chunks=TOKENS, delay=DELAY,
        head_delay=head,
    )  # fmt: skip


def cut_here(path: str, point: str, events: list[str]) -> bool:
    """Has the client seen enough of the answer to hang up at ``point``?"""
    if point == "before-first-byte":
        return True
    if path == "chat":
        content = sum('"content":"tok' in e for e in events)
        finished = any('"finish_reason":"stop"' in e for e in events)
    else:
        marker = "content_block_delta" if path == "messages" else "output_text.delta"
        content = sum(marker in e for e in events)
        done = "content_block_stop" if path == "messages" else "response.output_item.done"
        finished = any(done in e for e in events)
    if point == "mid-content":
        return content >= TOKENS // 2
    if point == "after-last-content":
        return content >= TOKENS
    return finished


async def provider_has_it(fake) -> None:
    """The request reached the provider (which waits 0.3 s before it answers): a fixed sleep
    instead is too short for the first request of a new key in the scaled mode, whose
    policy and spend counters are read from PostgreSQL first."""
    deadline = time.monotonic() + 10
    while not fake.ws_frames and not any(r.method == "POST" for r in fake.requests):
        assert time.monotonic() < deadline, "the request never reached the provider"
        await asyncio.sleep(0.005)


async def hang_up_over_http(gateway, fake, secret: str, path: str, point: str) -> int:
    """Send the request on a raw socket, read events until ``point``, then close. Returns
    the content events the client got, or -1 when the gateway refused the request."""
    target = {"messages": "/v1/messages", "chat": "/v1/chat/completions"}.get(path, "/v1/responses")
    body = request_body(path)
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = f"x-api-key: {secret}" if path == "messages" else f"authorization: Bearer {secret}"
    writer.write(
        f"POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"{auth}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    received = ""
    if point == "before-first-byte":
        await provider_has_it(fake)
    while not cut_here(path, point, received.split("\n\n")[:-1]):
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, f"the answer ended before {point}: {received[-300:]}"
        received += chunk.decode()
        if received.startswith("HTTP/1.1 4"):
            writer.close()
            return -1
    writer.close()
    return sum(
        ('"content":"tok' in e) or ("delta" in e and '"tok ' in e)
        for e in received.split("\n\n")[:-1]
    )


async def hang_up_over_websocket(gateway, fake, secret: str, path: str, point: str) -> int:
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    headers = {"Authorization": f"Bearer {secret}"}
    frame = {"type": "response.create", **orjson.loads(request_body(path))}
    frame.pop("stream")
    seen: list[str] = []
    async with websockets.connect(url, additional_headers=headers) as socket:
        await socket.send(orjson.dumps(frame))
        if point == "before-first-byte":
            await provider_has_it(fake)
        while not cut_here(path, point, seen):
            seen.append(await asyncio.wait_for(socket.recv(), 10))
            if seen[-1].startswith('{"type":"error"'):
                return -1
    return sum("output_text.delta" in e for e in seen)


def cost(kind: str, inputs: int, outputs: int) -> Decimal:
    rate_in, rate_out = PRICES[kind]
    return (inputs * rate_in + outputs * rate_out) / Decimal(10**6)


@pytest.fixture
def hang_up(gateway, fake, openai_provider, provider, make_key):
    async def run(path: str, point: str) -> tuple[int, str]:
        if path.startswith("ws-"):
            openai_provider.websockets = path == "ws-upstream"
            await sync_to_async(openai_provider.save)()
        fake.enqueue(answer(path, point))
        secret = await sync_to_async(make_key)()
        if path.startswith("ws-"):
            seen = await hang_up_over_websocket(gateway, fake, secret, "responses", point)
        else:
            seen = await hang_up_over_http(gateway, fake, secret, path, point)
        return seen, "anthropic" if path == "messages" else "openai"

    return run


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("path", PATHS)
async def test_given_up_at_once_the_estimate_is_never_below_what_the_client_got(
    hang_up, recorded, settings, path, point
):
    settings.LLMPROXY_ABANDONED_READ_SECONDS = 0
    seen, kind = await hang_up(path, point)
    (event,) = await sync_to_async(recorded)(1)
    inputs = true_input("responses" if path.startswith("ws-") else path)
    assert event.estimated and event.partial, (event.estimated, event.partial, event.error)
    assert event.input_tokens >= inputs
    assert event.output_tokens >= seen
    assert event.output_tokens <= TOKENS * 4 // 3 + 1  # nothing generated beyond the answer
    assert event.cost_usd >= cost(kind, inputs, seen) > 0


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("path", PATHS)
async def test_read_on_after_a_hang_up_the_provider_figure_is_recorded(
    hang_up, recorded, settings, path, point
):
    settings.LLMPROXY_ABANDONED_READ_SECONDS = 5
    _, kind = await hang_up(path, point)
    (event,) = await sync_to_async(recorded)(1)
    inputs = true_input("responses" if path.startswith("ws-") else path)
    assert not event.estimated and not event.partial, event.error
    assert (event.input_tokens, event.output_tokens) == (inputs, TOKENS)
    assert event.cost_usd == cost(kind, inputs, TOKENS)


def test_non_stream_answer_abandoned_while_the_gateway_reads_it(
    gateway, fake, make_key, recorded, settings
):
    """The gateway reads a JSON answer whole before replying: a client gone meanwhile
    leaves a half-read body, whose bytes are counted as content (an over-count)."""
    settings.LLMPROXY_ABANDONED_READ_SECONDS = 0
    secret = make_key()
    inputs = true_input("messages")
    fake.enqueue(
        fu.Reply(blocks=[{"type": "text", "text": TEXT}], body_pieces=10, delay=0.1,
                 usage={"input_tokens": inputs, "output_tokens": TOKENS})
    )  # fmt: skip
    body = orjson.loads(request_body("messages"))
    body.pop("stream")

    async def leave_early() -> None:
        host, port = gateway.url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        raw = orjson.dumps(body)
        writer.write(
            f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"x-api-key: {secret}\r\ncontent-length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        await writer.drain()
        await asyncio.sleep(0.45)  # about half the body has come from the provider
        writer.close()

    asyncio.run(leave_early())
    (event,) = recorded(1)
    assert event.estimated and event.partial
    assert event.input_tokens >= inputs and event.output_tokens > 0
    assert event.cost_usd >= cost("anthropic", inputs, TOKENS // 2)


@pytest.mark.parametrize("path", ["messages", "responses", "ws-upstream"])
def test_hanging_up_before_the_usage_event_buys_no_extra_answers(
    gateway, fake, openai_provider, make_key, recorded, settings, path
):
    """Rounds of concurrent streams that all hang up just before the usage event, against a
    budget that pays for five whole answers: the ledger counts every one of them, so no
    round admits more than the budget has left, and at most five answers are ever whole."""
    settings.LLMPROXY_ABANDONED_READ_SECONDS = 0  # the estimate path: the hardest case
    kind = "anthropic" if path == "messages" else "openai"
    body_path = "responses" if path.startswith("ws-") else path
    full = cost(kind, true_input(body_path), TOKENS)
    secret = make_key(budget_usd=full * 5, budget_period="day")
    if path.startswith("ws-"):
        openai_provider.websockets = True
        openai_provider.save()
    fake.set_default(answer(body_path, "before-usage"))

    async def one() -> bool:
        if path.startswith("ws-"):
            seen = await hang_up_over_websocket(gateway, fake, secret, body_path, "before-usage")
        else:
            seen = await hang_up_over_http(gateway, fake, secret, path, "before-usage")
        return seen == TOKENS  # -1: refused

    async def rounds() -> int:
        whole = 0
        for _ in range(3):
            whole += sum(await asyncio.gather(*(one() for _ in range(10))))
            await asyncio.sleep(0.3)  # let the round settle
        return whole

    whole = asyncio.run(rounds())
    events = recorded()
    assert 1 <= whole <= 5, whole
    spent = sum((e.cost_usd for e in events), Decimal(0))
    assert spent >= whole * full  # every whole answer was paid for in full or more
