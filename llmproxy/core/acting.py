"""Who is making changes right now: the admin or API request, or the management command,
that the audit log (``accounts.audit``) attributes each change to.

A context variable, so it follows the request or command through threads and tasks that
copy the context (asgiref's sync_to_async does). Outside any of them nothing is audited: the
proxy's own bookkeeping is not a change anyone made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Acting:
    via: str  # "admin", "api", "command"
    request: Any = None  # the request whose (possibly later authenticated) user acts
    user: Any = None
    name: str = ""  # what acts when no user does, e.g. "manage.py createkey"

    def actor(self):
        """The user acting (an API token's user once DRF authenticated it), or None."""
        user = self.user
        if user is None and self.request is not None:
            user = getattr(self.request, "user", None)
        return user if user is not None and user.is_authenticated else None


_current: ContextVar[Acting | None] = ContextVar("llmproxy_acting", default=None)


def current() -> Acting | None:
    return _current.get()


@contextmanager
def acting(via: str, *, request=None, user=None, name: str = "") -> Iterator[Acting]:
    token = _current.set(Acting(via=via, request=request, user=user, name=name))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
