"""Unique ids without a syscall per request: a random per-process prefix and a counter."""

from __future__ import annotations

import itertools
import os
import secrets

_state: dict = {}


def new_id() -> str:
    """32 hex characters, unique across processes and hosts (96 random bits per process)."""
    if _state.get("pid") != os.getpid():  # a forked worker must not reuse its parent's prefix
        _state.update(pid=os.getpid(), prefix=secrets.token_hex(12), counter=itertools.count())
    return f"{_state['prefix']}{next(_state['counter']):08x}"
