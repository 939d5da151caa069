"""Prompt the provider holds for a request beyond its body, so admission can reserve for it.

A request that continues a previous response (``previous_response_id``), names a stored
conversation or prompt template, or points at files and URLs makes the provider read more
than the body carries. The reservation, counted from the body's bytes, would miss it. What
the gateway knows is used instead: the context a previous response of the same credential ended
with (its recorded prompt and output), else ``LLMPROXY_HELD_CONTEXT_TOKENS`` per reference.
"""

from __future__ import annotations

from collections import OrderedDict

from django.conf import settings

from llmproxy.gateway.protocols.base import RequestInfo

KEPT = 20_000  # response ids remembered per process, oldest forgotten first


class HeldContext:
    def __init__(self) -> None:
        self._known: OrderedDict[tuple[str, str], int] = OrderedDict()

    def remember(self, subject: str, response_id: str, tokens: int) -> None:
        """The context a response ended with: what a call continuing it will read first."""
        self._known[subject, response_id] = tokens
        self._known.move_to_end((subject, response_id))
        while len(self._known) > KEPT:
            self._known.popitem(last=False)

    def tokens(self, subject: str, info: RequestInfo) -> int:
        floor = settings.LLMPROXY_HELD_CONTEXT_TOKENS
        held = info.held_references * floor
        if info.previous_response_id:
            known = self._known.get((subject, info.previous_response_id))
            held += floor if known is None else known
        return held


held_context = HeldContext()
