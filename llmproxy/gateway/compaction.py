"""Codex compaction that survives a provider's 413 (docs/providers.md, "Compaction and 413").

A compaction (``/v1/responses/compact``, or a ``/v1/responses`` call whose last input item
is ``compaction_trigger``) carries the whole history, and a long session's history can be
larger than the provider takes. When the provider answers 413, the history is split into
chunks under a target body size (4 MiB at first, halved on each further 413 down to a
64 KiB floor; a tool call never leaves its output, nor a reasoning item the item after it),
the chunks are compacted in parallel (``LLMPROXY_COMPACTION_CONCURRENCY``) at the same
provider, and their compaction items, in history order, are compacted once more by the
client's own call: that last answer is relayed to the client as the provider wrote it, so
Codex gets exactly the one compaction answer it expects.

The smaller cap a 413 taught is remembered per provider, model and endpoint for 30 minutes
(Redis in scaled mode, this process in embedded mode): a later compaction over it goes
straight to chunks, and the fan-out reads it again before each chunk is sent, so a chunk
that learned a smaller cap re-splits the chunks not sent yet instead of each paying its own
413. Every chunk call is admitted (rate limits, budget) and settled like any call and goes
through ``sharing`` (identical chunk calls in flight share one upstream call); the whole
fan-out shares one budget of upstream calls (``LLMPROXY_COMPACTION_MAX_CALLS``) and one
retry deadline (``LLMPROXY_RETRY_SECONDS``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from decimal import Decimal

import orjson
from django.conf import settings

from llmproxy.core import metrics
from llmproxy.core.loopbound import PerLoop
from llmproxy.gateway import failover, forwarding, hotstore, sharing
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.exchange import CLIENT_CLOSED, Exchange
from llmproxy.gateway.limits import limiter
from llmproxy.gateway.messages import Reply, error_reply
from llmproxy.gateway.policy import Candidate, KeyPolicy
from llmproxy.gateway.protocols import openai
from llmproxy.gateway.protocols.base import dump_json
from llmproxy.gateway.protocols.sse import SSESplitter

log = logging.getLogger(__name__)

INITIAL_CAP = 4 * 1024 * 1024  # the first target body size after a 413
FLOOR = 64 * 1024  # never smaller: a provider that refuses this is refused to the client
REMEMBER_SECONDS = 30 * 60
MAX_LEVELS = 4  # compactions of compactions, when the chunks' answers are still too large
TRIGGER = b'"compaction_trigger"'
UPSTREAM_413 = (b"x-llmproxy-upstream-status", b"413")
STAYS_TOO_LARGE = (
    "The history stays too large for the provider even compacted in chunks; start a new "
    "session from a summary."
)


# --- the caps learned from 413s ------------------------------------------------------------


class LocalCaps:
    """Embedded mode: the learned caps of this process."""

    def __init__(self) -> None:
        self._caps: dict[str, tuple[int, float]] = {}

    async def get(self, key: str) -> int | None:
        found = self._caps.get(key)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    async def lower(self, key: str, cap: int) -> int:
        """Remember ``cap`` unless a smaller one is known; the cap now in force."""
        current = await self.get(key)
        if current is not None and current <= cap:
            return current
        self._caps[key] = (cap, time.monotonic() + REMEMBER_SECONDS)
        return cap

    def forget(self) -> None:
        self._caps.clear()


# KEYS: the cap; ARGV: the new cap, seconds to keep it. Only ever lowers a cap in force, so
# siblings learning at once keep the smallest.
LOWER_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) <= tonumber(ARGV[1]) then return tonumber(current) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return tonumber(ARGV[1])
"""
CAP_PREFIX = "llmproxy:cap413:"


class RedisCaps:
    """Scaled mode: one cap per provider, model and endpoint for every worker."""

    def __init__(self) -> None:
        self._client = hotstore.async_redis()
        self._lower = self._client.register_script(LOWER_SCRIPT)

    async def get(self, key: str) -> int | None:
        value = await self._client.get(CAP_PREFIX + key)
        return int(value) if value else None

    async def lower(self, key: str, cap: int) -> int:
        return int(await self._lower(keys=[CAP_PREFIX + key], args=[cap, REMEMBER_SECONDS]))


_local_caps = LocalCaps()
_caps = PerLoop(lambda: RedisCaps() if settings.REDIS_URL else _local_caps)


def caps() -> LocalCaps | RedisCaps:
    return _caps.get()


def forget_caps() -> None:
    """Drop every learned cap (sync): this process's, and Redis's in scaled mode."""
    _local_caps.forget()
    if settings.REDIS_URL:
        client = hotstore.sync_redis()
        for name in client.scan_iter(CAP_PREFIX + "*"):
            client.delete(name)


def cap_key(candidate: Candidate, endpoint_path: str) -> str:
    return f"{candidate.provider.id}:{candidate.upstream_model}:{endpoint_path}"


def smaller_cap(current: int | None, refused: int) -> int | None:
    """The target after a body of ``refused`` bytes got a 413: the cap in force (4 MiB at
    first) halved until under it, at least the floor; None when even the floor was
    refused."""
    if refused <= FLOOR:
        return None
    cap = min(current or INITIAL_CAP, INITIAL_CAP)
    while cap >= refused and cap > FLOOR:
        cap //= 2
    return max(cap, FLOOR)


# --- the history and its chunks ---------------------------------------------------------


@dataclass
class Unit:
    """Items that must stay in one chunk (a tool call and its output, reasoning and the item
    it belongs to), and the bytes they add to a body."""

    items: list[dict]
    size: int


@dataclass
class Piece:
    """A chunk of the history in flight: where it sits in the history, and its answer."""

    position: tuple[int, ...]
    units: list[Unit]
    output: list[dict] | None = None

    @property
    def items(self) -> list[dict]:
        return [item for unit in self.units for item in unit.items]


def _is_call(item: dict) -> bool:
    return "call_id" in item and not str(item.get("type", "")).endswith("_output")


def _is_output(item: dict) -> bool:
    return "call_id" in item and str(item.get("type", "")).endswith("_output")


def units(items: list[dict]) -> list[Unit]:
    """The history cut only where no tool call waits for an output that comes later."""
    outputs = {item["call_id"]: index for index, item in enumerate(items) if _is_output(item)}
    found: list[Unit] = []
    start, reach = 0, 0
    for index, item in enumerate(items):
        if _is_call(item):
            reach = max(reach, outputs.get(item["call_id"], index))
        glued = item.get("type") == "reasoning" and index + 1 < len(items)
        if index >= reach and not glued:
            group = items[start : index + 1]
            found.append(Unit(group, sum(len(orjson.dumps(i)) + 1 for i in group)))
            start = index + 1
    return found


def pack(found: list[Unit], cap: int, overhead: int) -> list[list[Unit]]:
    """Units in order, as few to a chunk as keeps each body under ``cap`` (a unit larger
    than that goes alone)."""
    chunks: list[list[Unit]] = []
    current: list[Unit] = []
    size = overhead
    for unit in found:
        if current and size + unit.size > cap:
            chunks.append(current)
            current, size = [], overhead
        current.append(unit)
        size += unit.size
    if current:
        chunks.append(current)
    return chunks


@dataclass
class History:
    """A compaction's body: the history, and what every call of the fan-out repeats."""

    data: dict
    items: list[dict]
    tail: list[dict]  # [the trigger] on /v1/responses; nothing on /v1/responses/compact
    compact_endpoint: bool

    def body(self, items: list[dict]) -> bytes:
        return dump_json({**self.data, "input": [*items, *self.tail]})

    @property
    def overhead(self) -> int:
        return len(self.body([]))

    def size(self, items: list[dict]) -> int:
        return self.overhead + sum(len(orjson.dumps(i)) + 1 for i in items)

    def piece_size(self, piece: Piece) -> int:
        return self.overhead + sum(unit.size for unit in piece.units)

    def kept(self, output: list) -> list[dict]:
        """What of a chunk's answer the next call reads: the compaction items (and, from
        /v1/responses/compact, the whole replacement window it returns)."""
        items = [i for i in output if isinstance(i, dict)]
        if self.compact_endpoint:
            return items
        return [i for i in items if i.get("type") == "compaction"]


def history_of(exchange: Exchange) -> History | None:
    """The compaction's history, if the fallback can serve it: an input list, no response
    held at the provider, and either endpoint's shape."""
    body = exchange.incoming.body
    compact = exchange.endpoint is openai.COMPACT
    if exchange.info.previous_response_id or not (compact or TRIGGER in body):
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items = data.get("input") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    if compact:
        return History(data, items, [], True)
    if items and items[-1].get("type") == "compaction_trigger":
        return History(data, items[:-1], [items[-1]], False)
    return None


def output_of(body: bytes) -> list | None:
    """A Responses answer's output items, from its JSON or its SSE stream; None when it
    did not complete."""
    if body.lstrip()[:1] == b"{":
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        output = data.get("output") if isinstance(data, dict) else None
        done = not isinstance(data, dict) or data.get("status", "completed") == "completed"
        return output if isinstance(output, list) and done else None
    items: list = []
    for name, data in SSESplitter().feed(body + b"\n\n"):
        if name == b"response.output_item.done":
            items.append(_loads(data).get("item"))
        elif name == b"response.completed":
            return (_loads(data).get("response") or {}).get("output") or items
    return None


def _loads(data: bytes) -> dict:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def read_all(reply: Reply) -> bytes:
    """A reply's whole body (finished: its call is settled)."""
    try:
        if reply.stream is None:
            return reply.body
        return b"".join([chunk async for chunk in reply.stream])
    finally:
        await reply.finish()


# --- the flow --------------------------------------------------------------------------


class Failed(Exception):
    """The fallback cannot finish: ``reply`` is the client's answer."""

    def __init__(self, reply: Reply, note: str) -> None:
        super().__init__(note)
        self.reply = reply
        self.note = note


def too_large(protocol, message: str) -> Failed:
    error = ProxyError(ErrorKind.REQUEST_TOO_LARGE, message)
    return Failed(error_reply(protocol, error), message)


async def forward(exchange: Exchange) -> Reply:
    """Forward a compaction; a 413 from the provider makes it compact in chunks."""
    if exchange.protocol is not openai.PROTOCOL or exchange.info.kind != "compaction":
        return await forwarding.forward(exchange)
    candidate = _first_candidate(exchange)
    cap = await caps().get(cap_key(candidate, exchange.endpoint.upstream_path))
    if cap is not None and len(exchange.incoming.body) > cap:
        history = history_of(exchange)
        if history is not None:
            # Known to be too large for this provider: straight to chunks, no 413 to pay.
            exchange.use(candidate)
            exchange.reached = False
            return await _fall_back(exchange, history, candidate, cap)
    exchange.splits_on_413 = True
    try:
        return await forwarding.forward(exchange)
    except forwarding.TooLarge as refused:
        return await _after_413(exchange, refused)


def _first_candidate(exchange: Exchange) -> Candidate:
    ordered = failover.order(exchange.candidates, exchange.affinity())
    return next((c for c in ordered if not failover.breaker.is_open(c.provider.id)), ordered[0])


def _candidate_used(exchange: Exchange) -> Candidate:
    for candidate in exchange.candidates:
        if (candidate.provider.id, candidate.upstream_model) == (
            exchange.provider.id,
            exchange.upstream_model,
        ):
            return candidate
    return exchange.candidates[0]


async def _after_413(exchange: Exchange, refused: forwarding.TooLarge) -> Reply:
    exchange.status = 413  # the provider's answer: it cost nothing
    candidate = _candidate_used(exchange)
    key = cap_key(candidate, exchange.endpoint.upstream_path)
    history = history_of(exchange)
    cap = smaller_cap(await caps().get(key), refused.size)
    if history is None or cap is None:
        await exchange.settle(413, error=str(refused), partial=False)
        return refused.reply
    exchange.attempts += 1  # the client's call makes one more, after the chunks
    cap = await caps().lower(key, cap)
    return await _fall_back(exchange, history, candidate, cap)


async def _fall_back(exchange: Exchange, history: History, candidate: Candidate, cap: int):
    """Compact in chunks at ``candidate`` (its compaction items are only readable there),
    then make the client's call with their compaction items. The call's reservation is let
    go while the chunks run (each holds its own) and taken again for that last call."""
    exchange.candidates = [candidate]
    if exchange.ticket is not None:
        ticket, exchange.ticket = exchange.ticket, None
        await limiter().settle(ticket, Decimal(0), 0)
    fallback = Fallback(exchange, history, candidate, cap)
    try:
        return await fallback.run()
    except Failed as failed:
        log.info("compaction %s in chunks failed: %s", exchange.request_id, failed.note)
        await exchange.settle(failed.reply.status, error=failed.note[:500], partial=False)
        return failed.reply
    except BaseException:
        await exchange.settle(CLIENT_CLOSED, error="cancelled before reply", partial=True)
        raise


def concurrency(policy: KeyPolicy) -> int:
    """Chunk calls at once: the setting, within the credential's concurrency limits."""
    limits = [lim.max_concurrent for lim in policy.limits if lim.max_concurrent is not None]
    return max(1, min([settings.LLMPROXY_COMPACTION_CONCURRENCY, *limits]))


class Fallback:
    """One compaction's fan-out: its chunk calls, their shared budget, the final call."""

    def __init__(self, exchange: Exchange, history: History, candidate: Candidate, cap: int):
        self.exchange = exchange
        self.history = history
        self.candidate = candidate
        self.key = cap_key(candidate, exchange.endpoint.upstream_path)
        self.known = cap  # the smallest cap this fan-out learned (should the store lose it)
        self.calls_left = settings.LLMPROXY_COMPACTION_MAX_CALLS
        self.deadline = time.monotonic() + settings.LLMPROXY_RETRY_SECONDS
        self.concurrency = concurrency(exchange.policy)
        self.levels = 0

    async def cap(self) -> int:
        stored = await caps().get(self.key)
        self.known = min(stored or self.known, self.known)
        return self.known

    async def learn(self, refused: int, reply: Reply) -> int:
        cap = smaller_cap(await self.cap(), refused)
        if cap is None:
            raise Failed(reply, f"the provider refused {refused} bytes, under the {FLOOR} floor")
        self.known = await caps().lower(self.key, cap)
        return self.known

    async def run(self) -> Reply:
        items = self.history.items
        while True:
            if self.history.size(items) <= await self.cap():
                reply = await self.final(items)
                if reply is not None:
                    return reply
                continue  # the last call taught a smaller cap
            self.levels += 1
            if self.levels > MAX_LEVELS:
                raise too_large(self.exchange.protocol, STAYS_TOO_LARGE)
            compacted = await self.level(items)
            if self.history.size(compacted) >= self.history.size(items):
                raise too_large(self.exchange.protocol, STAYS_TOO_LARGE)
            items = compacted

    async def final(self, items: list[dict]) -> Reply | None:
        """The client's own call, over the chunks' compaction items; None after a 413."""
        exchange = self.exchange
        body = self.history.body(items)
        exchange.incoming = dataclasses.replace(exchange.incoming, body=body)
        try:
            await exchange.admit()
        except ProxyError as error:
            metrics.refused(error.kind.name, exchange.protocol.name)
            raise Failed(error_reply(exchange.protocol, error), error.message) from None
        exchange.reached = True
        try:
            return await self.send(exchange)
        except forwarding.TooLarge as refused:
            ticket, exchange.ticket = exchange.ticket, None
            if ticket is not None:
                await limiter().settle(ticket, Decimal(0), 0)
            exchange.status = 413
            exchange.attempts += 1
            await self.learn(refused.size, refused.reply)
            return None

    # --- one level of chunks ------------------------------------------------------------

    async def level(self, items: list[dict]) -> list[dict]:
        """The items compacted chunk by chunk (in parallel), their answers in order."""
        cap = await self.cap()
        overhead = self.history.overhead
        pending = [Piece((i,), c) for i, c in enumerate(pack(units(items), cap, overhead))]
        done: list[Piece] = []
        running: dict[asyncio.Future, Piece] = {}
        try:
            while pending or running:
                await self._dispatch(pending, running)
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    piece = running.pop(task)
                    if await self._settled(piece, task.result(), pending):
                        done.append(piece)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        done.sort(key=lambda piece: piece.position)
        return [item for piece in done for item in piece.output or ()]

    async def _dispatch(self, pending: list[Piece], running: dict) -> None:
        """Send pieces while there is room; each is checked against the cap in force first
        (a sibling may have learned a smaller one) and re-split if over it."""
        while pending and len(running) < self.concurrency:
            piece = pending.pop(0)
            cap = await self.cap()
            if self.history.piece_size(piece) > cap and len(piece.units) > 1:
                pending[:0] = self._split(piece, cap)
                continue
            running[asyncio.ensure_future(self.compact(piece))] = piece

    def _split(self, piece: Piece, cap: int) -> list[Piece]:
        chunks = pack(piece.units, cap, self.history.overhead)
        return [Piece((*piece.position, i), chunk) for i, chunk in enumerate(chunks)]

    async def _settled(self, piece: Piece, result: tuple, pending: list[Piece]) -> bool:
        output, reply = result
        if output is not None:
            piece.output = output
            return True
        # The provider refused this chunk as too large: learn, and split it further.
        size = self.history.piece_size(piece)
        cap = await self.learn(size, reply)
        if len(piece.units) == 1:
            raise Failed(reply, f"one tool call and its output ({size} bytes) is too large")
        pending[:0] = self._split(piece, cap)
        return False

    async def compact(self, piece: Piece) -> tuple[list[dict] | None, Reply]:
        """One chunk's compaction: its answer's items, or None and the 413."""
        child = self.child(piece.items)
        reply = await sharing.share(child, self.lead)
        body = await read_all(reply)
        if UPSTREAM_413 in reply.headers:
            return None, Reply(reply.status, reply.headers, body)
        if reply.status >= 400:
            said = child.kind.error_message(body)
            note = f"a chunk call got HTTP {reply.status}" + (f": {said}" if said else "")
            raise Failed(Reply(reply.status, reply.headers, body), note)
        output = output_of(body)
        kept = self.history.kept(output or [])
        if not kept:
            error = ProxyError(
                ErrorKind.UPSTREAM_UNAVAILABLE,
                f"Provider {self.candidate.provider.name!r} compacted part of the history "
                "without a compaction item.",
            )
            raise Failed(error_reply(self.exchange.protocol, error), error.message)
        return kept, reply

    def child(self, items: list[dict]) -> Exchange:
        """A chunk call: the client's request with part of the history, its own call."""
        parent = self.exchange
        incoming = dataclasses.replace(
            parent.incoming, body=self.history.body(items), arrived=time.perf_counter()
        )
        info = dataclasses.replace(parent.info, held_prompt_tokens=0)
        child = Exchange(
            incoming, parent.protocol, parent.endpoint, parent.policy, info,
            [self.candidate], parent.prices,
        )  # fmt: skip
        child.forwarded = parent.forwarded
        child.splits_on_413 = True
        return child

    async def lead(self, exchange: Exchange) -> Reply:
        """A chunk call that goes upstream (no identical one is in flight)."""
        try:
            await exchange.admit()
        except ProxyError as error:
            metrics.refused(error.kind.name, exchange.protocol.name)
            return error_reply(exchange.protocol, error)
        try:
            return await self.send(exchange)
        except forwarding.TooLarge as refused:
            exchange.records_usage = False  # it cost nothing; its smaller chunks are the calls
            exchange.status = 413
            await exchange.settle(413, partial=False)
            return refused.reply

    # --- attempts, from the fan-out's budget -------------------------------------------

    def take_call(self) -> bool:
        """One upstream call from the fan-out's budget (no await: safe under concurrency)."""
        if self.calls_left <= 0:
            return False
        self.calls_left -= 1
        return True

    async def send(self, exchange: Exchange) -> Reply:
        """One call's attempts at the pinned provider: overload answers are retried while
        the fan-out's deadline lasts, every attempt from its budget of calls."""
        try:
            return await self._send(exchange)
        except forwarding.TooLarge:
            raise
        except BaseException:
            await exchange.settle(CLIENT_CLOSED, error="cancelled before reply", partial=True)
            raise

    async def _send(self, exchange: Exchange) -> Reply:
        reached = exchange.status != 0  # an earlier attempt of this call got an answer
        for round_ in range(100):
            if not self.take_call():
                return await self._out_of_calls(exchange, reached)
            outcome = await forwarding.attempt(exchange)
            if isinstance(outcome, Reply):
                return outcome
            reached = reached or outcome.reached
            wait = outcome.retry_after or min(4.0, 0.25 * 2**round_) * random.uniform(0.5, 1.5)
            if outcome.status not in forwarding.OVERLOAD or time.monotonic() + wait > self.deadline:
                exchange.reached = reached
                await exchange.settle(outcome.reply.status, error=outcome.note, partial=False)
                return outcome.reply
            exchange.attempts += 1
            await asyncio.sleep(wait)
        return await self._out_of_calls(exchange, reached)

    async def _out_of_calls(self, exchange: Exchange, reached: bool) -> Reply:
        limit = settings.LLMPROXY_COMPACTION_MAX_CALLS
        error = ProxyError(
            ErrorKind.REQUEST_TOO_LARGE,
            f"Compacting this history in chunks needed more than {limit} provider calls "
            "(LLMPROXY_COMPACTION_MAX_CALLS); start a new session or compact sooner.",
        )
        exchange.reached = reached
        await exchange.settle(error.kind.status, error=error.message, partial=False)
        return error_reply(exchange.protocol, error)
