"""Several providers per route: the order to try them in, and which to skip for a while.

Routes of the same priority share the traffic by weight, but a session keeps to one
provider while it works: prompt caches live per provider account, and hopping between them
loses cache hits and costs money (Codex's x-codex-turn-state also wants it). Weighted
rendezvous hashing on the session gives each session a stable order over the providers, in
the weights' proportions across sessions. A provider that keeps failing before its first
byte is skipped for a while (a circuit breaker, per worker process), then tried again.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings

from llmproxy.gateway.policy import Candidate


def _unit(text: str) -> float:
    """A stable number in (0, 1) from text."""
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return (value + 1) / (2**64 + 1)


def order(candidates: list[Candidate], affinity: str) -> list[Candidate]:
    """Candidates by priority; within a priority, by weighted rendezvous on ``affinity``."""

    def rank(candidate: Candidate) -> tuple[int, float]:
        draw = _unit(f"{affinity}\n{candidate.provider.id}\n{candidate.upstream_model}")
        return candidate.priority, -math.log(draw) / max(candidate.weight, 1)

    return sorted(candidates, key=rank)


@dataclass
class _State:
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class Breaker:
    """After LLMPROXY_BREAKER_FAILURES failures in a row, a provider is skipped for
    LLMPROXY_BREAKER_SECONDS; then one call may try it (half-open): a success closes the
    breaker, a failure opens it again."""

    def __init__(self) -> None:
        self._states: dict[int, _State] = {}

    def available(self, provider_id: int, now: float | None = None) -> bool:
        state = self._states.get(provider_id)
        if state is None or state.failures < settings.LLMPROXY_BREAKER_FAILURES:
            return True
        now = time.monotonic() if now is None else now
        if now < state.open_until or state.probing:
            return False
        state.probing = True  # half-open: this call is the probe
        return True

    def failed(self, provider_id: int, now: float | None = None) -> None:
        state = self._states.setdefault(provider_id, _State())
        state.failures += 1
        state.probing = False
        if state.failures >= settings.LLMPROXY_BREAKER_FAILURES:
            now = time.monotonic() if now is None else now
            state.open_until = now + settings.LLMPROXY_BREAKER_SECONDS

    def succeeded(self, provider_id: int) -> None:
        self._states.pop(provider_id, None)

    def is_open(self, provider_id: int) -> bool:
        state = self._states.get(provider_id)
        return state is not None and state.failures >= settings.LLMPROXY_BREAKER_FAILURES

    def reset(self) -> None:
        self._states.clear()


breaker = Breaker()
