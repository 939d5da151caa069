"""Whether this process is draining: shutting down after a SIGTERM, finishing what it has.

While draining, /readyz fails (load balancers stop sending it new work), new proxied calls
get a 503 telling the client to retry elsewhere, and open streams and websocket turns are
let finish within the grace period (docs/operations.md, "Deploys").
"""

from __future__ import annotations

import threading

_draining = threading.Event()


def start() -> None:
    _draining.set()


def is_draining() -> bool:
    return _draining.is_set()


def reset() -> None:
    """Tests only: serve again."""
    _draining.clear()
