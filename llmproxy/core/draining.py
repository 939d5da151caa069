"""Whether this process is draining: shutting down after a SIGTERM, finishing what it has.

While draining, /readyz fails (load balancers stop sending it new work), new proxied calls
get a 503 telling the client to retry elsewhere, websocket clients are told to reconnect,
and open streams and websocket turns are let finish within the grace period
(docs/operations.md, "Deploys").

``install`` runs at the ASGI lifespan startup, in the server's main thread: it puts
``_on_signal`` in front of the server's own SIGTERM/SIGINT handler, so the process starts
draining the moment the signal arrives and the server's shutdown (stop accepting, wait for
the open connections) follows ``LLMPROXY_DRAIN_DELAY_SECONDS`` later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
from collections.abc import Callable

from django.conf import settings

log = logging.getLogger(__name__)

_draining = threading.Event()
# Called in the event loop when draining starts (open websockets close their idle sockets).
_watchers: set[Callable[[], None]] = set()
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def start() -> None:
    """Drain from here on (call in the event loop: the watchers run at once)."""
    if not _draining.is_set():
        _draining.set()
        _notify()


def _notify() -> None:
    log.info("draining: finishing open calls, refusing new ones")
    for watcher in list(_watchers):
        try:
            watcher()
        except Exception:
            log.exception("a drain watcher failed")


def is_draining() -> bool:
    return _draining.is_set()


def watch(watcher: Callable[[], None]) -> None:
    _watchers.add(watcher)


def unwatch(watcher: Callable[[], None]) -> None:
    _watchers.discard(watcher)


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Drain on SIGTERM/SIGINT before the server's handler runs; False where signals are
    not this process's to take (a server in a thread, as in the tests)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if callable(previous) and not isinstance(previous, functools.partial):
            signal.signal(sig, functools.partial(_on_signal, previous, loop))
    return True


def _on_signal(previous, loop: asyncio.AbstractEventLoop, sig: int, frame) -> None:
    if _draining.is_set():  # a second signal: the server's own handling, at once
        previous(sig, frame)
        return
    _draining.set()
    loop.call_soon_threadsafe(_notify)  # the watchers run in the loop, not in the handler
    delay = settings.LLMPROXY_DRAIN_DELAY_SECONDS
    if delay > 0:
        # Still accepting for a while (readiness fails, proxied calls get 503) so a load
        # balancer that watches /readyz stops sending work before the listener closes.
        loop.call_soon_threadsafe(loop.call_later, delay, previous, sig, None)
    else:
        previous(sig, frame)


def reset() -> None:
    """Tests only: serve again."""
    _draining.clear()
