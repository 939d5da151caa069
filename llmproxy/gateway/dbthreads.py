"""The few database reads the proxy path makes (cold policy, spend rebuild) run here.

A small dedicated pool keeps them off the event loop and keeps their connections in known
threads, so they can be closed on shutdown (and between test sessions).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import close_old_connections, connections

T = TypeVar("T")
WORKERS = 4

_executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="proxy-db")


def _run(fn: Callable[..., T], *args) -> T:
    close_old_connections()  # drop a connection the database closed or that is too old
    return fn(*args)


async def run(fn: Callable[..., T], *args) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(_run, fn, *args))


def close_all() -> None:
    """Close the connection of every pool thread (each closes its own)."""
    barrier = threading.Barrier(WORKERS)

    def close() -> None:
        barrier.wait(timeout=10)  # holds each thread until all took one task
        connections.close_all()

    for future in [_executor.submit(close) for _ in range(WORKERS)]:
        future.result(timeout=20)
