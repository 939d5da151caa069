"""Admission: rate limits, concurrency and budget reservations, in one atomic step.

Budgets cannot be overshot by concurrency: admission *reserves* the request's worst-case cost
(input estimate and maximum output at the model's prices) and refuses when
``spent + reserved + estimate > limit``. Settling swaps the reservation for the actual cost.
Checking recorded spend alone, as other gateways do, lets every concurrent request pass.

Scaled mode runs the step as a Redis Lua script, so every worker on every host shares the
counters; embedded mode runs the same logic in this process, where having no ``await``
between check and update makes it atomic. A spend counter that is missing (Redis restarted or
flushed, a new period) is rebuilt from the usage ledger before anything is admitted against
it, never assumed to be zero. Reservations and concurrency slots expire after ``HOLD_TTL``,
so a worker that died holding them cannot block a key forever.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings

from billing.budgets import Budget
from billing.models import UsageDaily
from billing.periods import period_end
from billing.reservations import UNIT, from_units, to_units
from llmproxy.core.ids import new_id
from llmproxy.core.loopbound import PerLoop
from llmproxy.gateway import dbthreads, hotstore
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.policy import KeyPolicy, Limits
from llmproxy.gateway.usage_sink import sink

HOLD_TTL = 3600  # seconds a reservation or slot outlives a worker that died holding it
PREFIX = "llmproxy:lim:"


@dataclass
class State:
    """What admission saw, for the x-llmproxy-ratelimit-* and budget headers."""

    rpm: int | None = None  # the first layer's request limit, and its use this minute
    rpm_used: int = 0
    tpm: int | None = None
    tpm_used: int = 0
    budget: Budget | None = None  # the budget with the least room left
    budget_left_units: int | None = None


@dataclass
class Ticket:
    id: str
    policy: KeyPolicy
    minute: int
    reserved_units: int = 0
    budgets: tuple[Budget, ...] = ()  # the budgets this call counts against
    limits: tuple[Limits, ...] = ()  # the rate-limit layers it counts against
    budget_keys: list[tuple[str, str]] = field(default_factory=list)  # (spend, reservations)
    state: State = field(default_factory=State)
    released: bool = False


def budget_keys(budget: Budget, now: float) -> tuple[str, str]:
    moment = datetime.fromtimestamp(now, UTC)
    name = f"{budget.subject}:{budget.period_name(moment)}"
    return f"{PREFIX}spend:{name}", f"{PREFIX}resv:{name}"


def _spend_ttl(budget: Budget, now: float) -> int:
    end = period_end(budget.period, datetime.fromtimestamp(now, UTC))
    # Kept a day past the period's end for reconciliation; lifetime counters a year at a time.
    return int(end.timestamp() - now) + 86_400 if end else 365 * 86_400


async def ledger_spend(budget: Budget, now: float) -> int:
    """Spend to rebuild a lost counter from: this process's queued usage first goes to the
    ledger, so what it settled before the loss is counted."""
    await asyncio.to_thread(sink.flush, 10.0)
    return await dbthreads.run(spent_in_period, budget, now)


def spent_in_period(budget: Budget, now: float) -> int:
    """Recorded spend for the budget's current period, in counter units (sync: ORM)."""
    return to_units(UsageDaily.objects.spent(budget, datetime.fromtimestamp(now, UTC)))


def _refusal(code: int, ticket: Ticket, now: float, index: int) -> ProxyError:
    """Refusal ``code`` (1 concurrency, 2 requests/min, 3 tokens/min of limits #index, 4
    budget #index) in the words the client shows."""
    to_next_minute = max(1, math.ceil(60 - now % 60))
    if code in (1, 2, 3):
        limits = ticket.limits[index]
        if code == 1:
            message = f"{limits.holder} allows {limits.max_concurrent} concurrent requests; wait."
            error = ProxyError(ErrorKind.RATE_LIMIT, message, retry_after=1)
        elif code == 2:
            message = f"{limits.holder} allows {limits.rpm} requests per minute."
            error = ProxyError(ErrorKind.RATE_LIMIT, message, retry_after=to_next_minute)
        else:
            message = f"{limits.holder} allows {limits.tpm} tokens per minute."
            error = ProxyError(ErrorKind.RATE_LIMIT, message, retry_after=to_next_minute)
    else:
        budget = ticket.budgets[index]
        error = ProxyError(
            ErrorKind.BILLING,
            f"{BUDGET_HOLDERS[budget.scope]} budget of ${budget.limit_usd} per {budget.period} "
            f"is spent or reserved by requests in flight (this request could cost up to "
            f"${from_units(ticket.reserved_units).normalize():f}).",
        )
        if ticket.policy.credential == "claude_code":
            _as_spend_cap(error, budget, now)
    error.headers.update(state_headers(ticket, now))
    return error


def _as_spend_cap(error: ProxyError, budget: Budget, now: float) -> None:
    """Claude Code signed in to a gateway shows a 402 as "API Error: 402 …" and a bare 429
    as "Server is temporarily limiting requests (not your usage limit)"; a 429 that says a
    spend cap was reached (the headers Anthropic's reference gateway sends) it shows as the
    message alone. x-should-retry: false keeps it from retrying either way."""
    error.status = 429
    end = period_end(budget.period, datetime.fromtimestamp(now, UTC))
    error.headers["anthropic-ratelimit-unified-status"] = "rejected"
    error.headers["anthropic-ratelimit-unified-overage-disabled-reason"] = "org_spend_cap_reached"
    if end is not None:
        error.headers["anthropic-ratelimit-unified-reset"] = str(int(end.timestamp()))
        error.retry_after = max(1, int(end.timestamp() - now))


BUDGET_HOLDERS = {"key": "This key's", "person": "Your", "team": "Your team's"}


def state_headers(ticket: Ticket, now: float) -> dict[str, str]:
    """Remaining budget and rate limits, named like the providers' ratelimit headers (for the
    first layer that sets each limit: the key's, else the person's, else the team's)."""
    state = ticket.state
    headers: dict[str, str] = {}
    reset = f"{max(1, math.ceil(60 - now % 60))}s"
    if state.rpm is not None:
        headers["x-llmproxy-ratelimit-limit-requests"] = str(state.rpm)
        headers["x-llmproxy-ratelimit-remaining-requests"] = str(max(0, state.rpm - state.rpm_used))
        headers["x-llmproxy-ratelimit-reset-requests"] = reset
    if state.tpm is not None:
        headers["x-llmproxy-ratelimit-limit-tokens"] = str(state.tpm)
        headers["x-llmproxy-ratelimit-remaining-tokens"] = str(max(0, state.tpm - state.tpm_used))
        headers["x-llmproxy-ratelimit-reset-tokens"] = reset
    if state.budget is not None and state.budget_left_units is not None:
        left = max(0, state.budget_left_units)
        headers["x-llmproxy-budget-limit-usd"] = f"{state.budget.limit_usd:f}"
        headers["x-llmproxy-budget-remaining-usd"] = f"{from_units(left).quantize(UNIT):f}"
        headers["x-llmproxy-budget-period"] = state.budget.period
    return headers


def _tightest(state: State, budget: Budget, left: int) -> None:
    if state.budget_left_units is None or left < state.budget_left_units:
        state.budget, state.budget_left_units = budget, left


def _note_usage(state: State, limits: Limits, rpm_used: int, tpm_used: int) -> None:
    """Keep, for the headers, the first layer that sets each rate limit."""
    if limits.rpm is not None and state.rpm is None:
        state.rpm, state.rpm_used = limits.rpm, rpm_used
    if limits.tpm is not None and state.tpm is None:
        state.tpm, state.tpm_used = limits.tpm, tpm_used


def counter_names(limits: Limits, minute: int) -> tuple[str, str, str]:
    """Slots, requests-this-minute and tokens-this-minute counters of one layer."""
    return (
        f"{PREFIX}slots:{limits.subject}",
        f"{PREFIX}rpm:{limits.subject}:{minute}",
        f"{PREFIX}tpm:{limits.subject}:{minute}",
    )


def free_ticket(policy: KeyPolicy, estimate: int, now: float, billed: bool) -> Ticket | None:
    """The ticket of a call with nothing to count (no limit and no budget on any layer), or
    None when there is something: it needs no await, so the caller can skip the task that
    protects an admission from being cut off half-way."""
    if policy.limited:
        return None
    ticket = Ticket(new_id(), policy, int(now // 60), estimate)
    ticket.budgets = policy.budgets if billed else ()
    ticket.limits = policy.limits
    ticket.released = True  # nothing to count or release
    return ticket


class LocalLimiter:
    """The embedded twin of the Redis script: the same checks, in process memory."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.slots: dict[str, dict[str, float]] = {}
        self.reservations: dict[str, dict[str, tuple[int, float]]] = {}

    async def admit(
        self, policy: KeyPolicy, estimate: int = 0, now: float | None = None, *, billed=True
    ) -> Ticket:
        """Admit a call or raise the refusal. An unbilled call (a token count) is held to the
        rate and concurrency limits only, not to budgets."""
        now = time.time() if now is None else now
        ticket = free_ticket(policy, estimate, now, billed)
        if ticket is not None:
            return ticket
        ticket = Ticket(new_id(), policy, int(now // 60), estimate)
        ticket.budgets = policy.budgets if billed else ()
        ticket.limits = policy.limits
        ticket.budget_keys = [budget_keys(b, now) for b in ticket.budgets]
        for budget, (spend, _) in zip(ticket.budgets, ticket.budget_keys, strict=True):
            if spend not in self.counters:
                spent = await ledger_spend(budget, now)
                self.counters.setdefault(spend, spent)
        # From here on no await: check and update happen as one step.
        self._check(ticket, now)
        for limits in ticket.limits:
            slots, rpm, _ = counter_names(limits, ticket.minute)
            self.slots.setdefault(slots, {})[ticket.id] = now + HOLD_TTL
            self.counters[rpm] = self.counters.get(rpm, 0) + 1
        if ticket.state.rpm is not None:
            ticket.state.rpm_used += 1
        for _, reservations in ticket.budget_keys:
            self.reservations.setdefault(reservations, {})[ticket.id] = (estimate, now + HOLD_TTL)
        self._forget_old_minutes(ticket.minute)
        return ticket

    def _check(self, ticket: Ticket, now: float) -> None:
        state = ticket.state
        for index, limits in enumerate(ticket.limits):
            slots_name, rpm_name, tpm_name = counter_names(limits, ticket.minute)
            slots = self.slots.setdefault(slots_name, {})
            for held in [t for t, expiry in slots.items() if expiry <= now]:
                del slots[held]
            rpm_used = self.counters.get(rpm_name, 0)
            tpm_used = self.counters.get(tpm_name, 0)
            _note_usage(state, limits, rpm_used, tpm_used)
            if limits.max_concurrent is not None and len(slots) >= limits.max_concurrent:
                raise _refusal(1, ticket, now, index)
            if limits.rpm is not None and rpm_used >= limits.rpm:
                raise _refusal(2, ticket, now, index)
            if limits.tpm is not None and tpm_used >= limits.tpm:
                raise _refusal(3, ticket, now, index)
        for index, (budget, (spend, reservations)) in enumerate(
            zip(ticket.budgets, ticket.budget_keys, strict=True)
        ):
            held = self.reservations.setdefault(reservations, {})
            for expired in [t for t, (_, expiry) in held.items() if expiry <= now]:
                del held[expired]
            used = self.counters[spend] + sum(amount for amount, _ in held.values())
            room = to_units(budget.limit_usd) - used
            _tightest(state, budget, room - ticket.reserved_units)
            if room <= 0 or room < ticket.reserved_units:
                state.budget, state.budget_left_units = budget, room  # what is left without it
                raise _refusal(4, ticket, now, index)

    async def settle(self, ticket: Ticket, cost: Decimal, tokens: int) -> None:
        if ticket.released:
            return
        ticket.released = True
        for limits in ticket.limits:
            slots, _, tpm = counter_names(limits, ticket.minute)
            self.slots.get(slots, {}).pop(ticket.id, None)
            self.counters[tpm] = self.counters.get(tpm, 0) + tokens
        for spend, reservations in ticket.budget_keys:
            self.reservations.get(reservations, {}).pop(ticket.id, None)
            if spend in self.counters:
                self.counters[spend] += to_units(cost)

    def forget_spend(self) -> None:
        """Drop every spend counter, as a Redis flush would (tests, reconciliation)."""
        for name in [n for n in self.counters if n.startswith(f"{PREFIX}spend:")]:
            del self.counters[name]

    def _forget_old_minutes(self, minute: int) -> None:
        if len(self.counters) < 10_000:
            return
        for name in [n for n in self.counters if n.startswith((f"{PREFIX}rpm:", f"{PREFIX}tpm:"))]:
            if int(name.rsplit(":", 1)[1]) < minute - 1:
                del self.counters[name]


# KEYS: (slots, rpm, tpm) per limit layer, then (spend, reservations) per budget.
# ARGV: now, ticket, hold expiry, estimate, layers, then (max concurrent, rpm, tpm; -1: no
# limit) per layer, then one limit per budget. Returns {code, index, rpm used and tpm used
# per layer (a list), least room left after this request's reservation, that budget's index}:
# code 0 admitted, 1-3 rate refusals of layer #index, 4 budget #index refused, 9 spend
# counter #index missing.
ADMIT_SCRIPT = """
local now = tonumber(ARGV[1])
local estimate = tonumber(ARGV[4])
local layers = tonumber(ARGV[5])
local budgets = (#KEYS - 3 * layers) / 2
local used = {}
for l = 1, layers do
  local slots, rpm_key, tpm_key = KEYS[3 * l - 2], KEYS[3 * l - 1], KEYS[3 * l]
  local max_concurrent = tonumber(ARGV[3 * l + 3])
  local rpm = tonumber(ARGV[3 * l + 4])
  local tpm = tonumber(ARGV[3 * l + 5])
  local rpm_used = tonumber(redis.call('GET', rpm_key) or '0')
  local tpm_used = tonumber(redis.call('GET', tpm_key) or '0')
  used[2 * l - 1], used[2 * l] = rpm_used, tpm_used
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if max_concurrent >= 0 and redis.call('ZCARD', slots) >= max_concurrent then
    return {1, l, used, 0, 0}
  end
  if rpm >= 0 and rpm_used >= rpm then return {2, l, used, 0, 0} end
  if tpm >= 0 and tpm_used >= tpm then return {3, l, used, 0, 0} end
end
local base = 3 * layers
local least, least_index = nil, 0
for i = 1, budgets do
  local spend_key, held_key = KEYS[base + 2 * i - 1], KEYS[base + 2 * i]
  local spent = redis.call('GET', spend_key)
  if not spent then return {9, i, used, 0, 0} end
  local reserved = 0
  local held = redis.call('HGETALL', held_key)
  for j = 1, #held, 2 do
    local sep = string.find(held[j + 1], ':', 1, true)
    local amount = tonumber(string.sub(held[j + 1], 1, sep - 1))
    if tonumber(string.sub(held[j + 1], sep + 1)) <= now then
      redis.call('HDEL', held_key, held[j])
    else
      reserved = reserved + amount
    end
  end
  local room = tonumber(ARGV[5 + 3 * layers + i]) - tonumber(spent) - reserved
  if least == nil or room - estimate < least then least, least_index = room - estimate, i end
  if room <= 0 or room < estimate then return {4, i, used, room, i} end
end
for l = 1, layers do
  redis.call('ZADD', KEYS[3 * l - 2], tonumber(ARGV[3]), ARGV[2])
  redis.call('EXPIRE', KEYS[3 * l - 2], 7200)
  redis.call('INCR', KEYS[3 * l - 1])
  redis.call('EXPIRE', KEYS[3 * l - 1], 120)
  used[2 * l - 1] = used[2 * l - 1] + 1
end
for i = 1, budgets do
  redis.call('HSET', KEYS[base + 2 * i], ARGV[2], estimate .. ':' .. ARGV[3])
  redis.call('EXPIRE', KEYS[base + 2 * i], 7200)
end
return {0, 0, used, least or 0, least_index}
"""

# KEYS: (slots, tpm) per layer, then (spend, reservations) per budget; ARGV: ticket, tokens,
# cost units, layers. A spend counter that vanished stays missing: the next admission
# rebuilds it from the ledger.
SETTLE_SCRIPT = """
local layers = tonumber(ARGV[4])
for l = 1, layers do
  redis.call('ZREM', KEYS[2 * l - 1], ARGV[1])
  if tonumber(ARGV[2]) > 0 then
    redis.call('INCRBY', KEYS[2 * l], ARGV[2])
    redis.call('EXPIRE', KEYS[2 * l], 120)
  end
end
for i = 2 * layers + 1, #KEYS, 2 do
  redis.call('HDEL', KEYS[i + 1], ARGV[1])
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[3]) end
end
return 1
"""


class RedisLimiter:
    def __init__(self) -> None:
        self._scripts = PerLoop(self._register)

    def _register(self):
        client = hotstore.async_redis()
        return client.register_script(ADMIT_SCRIPT), client.register_script(SETTLE_SCRIPT)

    async def admit(
        self, policy: KeyPolicy, estimate: int = 0, now: float | None = None, *, billed=True
    ) -> Ticket:
        """Admit a call or raise the refusal. An unbilled call (a token count) is held to the
        rate and concurrency limits only, not to budgets."""
        now = time.time() if now is None else now
        ticket = free_ticket(policy, estimate, now, billed)
        if ticket is not None:
            return ticket
        ticket = Ticket(new_id(), policy, int(now // 60), estimate)
        ticket.budgets = policy.budgets if billed else ()
        ticket.limits = policy.limits
        ticket.budget_keys = [budget_keys(b, now) for b in ticket.budgets]
        admit_script, _ = self._scripts.get()
        keys = [name for limits in ticket.limits for name in counter_names(limits, ticket.minute)]
        keys += [name for pair in ticket.budget_keys for name in pair]
        args = [now, ticket.id, now + HOLD_TTL, estimate, len(ticket.limits)]
        for limits in ticket.limits:
            args += [_limit(limits.max_concurrent), _limit(limits.rpm), _limit(limits.tpm)]
        args += [to_units(b.limit_usd) for b in ticket.budgets]
        for _attempt in range(3):
            code, index, used, least, least_index = await admit_script(keys=keys, args=args)
            if code != 9:
                break
            await self._rebuild(ticket.budgets[index - 1], ticket.budget_keys[index - 1][0], now)
        # A layer that refused ends the list: the layers after it were not looked at.
        for layer, limits in enumerate(ticket.limits[: len(used) // 2]):
            _note_usage(ticket.state, limits, int(used[2 * layer]), int(used[2 * layer + 1]))
        if least_index:
            _tightest(ticket.state, ticket.budgets[least_index - 1], int(least))
        if code == 0:
            return ticket
        if code == 9:
            raise ProxyError(ErrorKind.INTERNAL, "The spend ledger is unavailable; try again.")
        if code == 4:
            ticket.state.budget = ticket.budgets[index - 1]
            ticket.state.budget_left_units = int(least)
        raise _refusal(code, ticket, now, index - 1)

    async def _rebuild(self, budget: Budget, counter: str, now: float) -> None:
        spent = await ledger_spend(budget, now)
        await hotstore.async_redis().set(counter, spent, nx=True, ex=_spend_ttl(budget, now))

    async def settle(self, ticket: Ticket, cost: Decimal, tokens: int) -> None:
        if ticket.released:
            return
        ticket.released = True
        _, settle_script = self._scripts.get()
        keys = []
        for limits in ticket.limits:
            slots, _, tpm = counter_names(limits, ticket.minute)
            keys += [slots, tpm]
        keys += [name for pair in ticket.budget_keys for name in pair]
        args = [ticket.id, tokens, to_units(cost), len(ticket.limits)]
        await settle_script(keys=keys, args=args)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


_limiters = PerLoop(lambda: RedisLimiter() if settings.REDIS_URL else _local)
_local = LocalLimiter()


def limiter() -> LocalLimiter | RedisLimiter:
    return _limiters.get()


# KEYS: spend counter; ARGV: the ledger's spend, ttl. Raises the counter to the ledger when it
# fell below it (increments lost with Redis); never lowers it (settled spend may be on its
# way to the ledger still).
RECONCILE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def reconcile(budgets: list[Budget], now: float | None = None) -> int:
    """Bring Redis spend counters up to the usage ledger (sync; Celery beat). Returns fixes."""
    if not settings.REDIS_URL:
        return 0  # embedded: the counters live in the web process and rebuild themselves
    now = time.time() if now is None else now
    script = hotstore.sync_redis().register_script(RECONCILE_SCRIPT)
    fixed = 0
    for budget in budgets:
        spend, _ = budget_keys(budget, now)
        ledger = spent_in_period(budget, now)
        fixed += script(keys=[spend], args=[ledger, _spend_ttl(budget, now)])
    return fixed
