"""Shared hot state: the policy generation now; counters for limits and budgets.

Scaled mode keeps it in Redis so every worker on every host sees the same numbers; embedded
mode keeps it in this process, with the generation in a file so that a management command in
another process still invalidates the gateway's cached policies.
"""

from __future__ import annotations

import os
import time
from functools import cache
from pathlib import Path

from django.conf import settings

from llmproxy.core.loopbound import PerLoop

GENERATION_KEY = "llmproxy:policy-generation"


@cache
def sync_redis():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


def _generation_file() -> Path:
    return Path(settings.DATA_DIR) / "policy-generation"


def bump_generation() -> None:
    """Called on every save of a key, team, provider, route or price (sync, rare)."""
    bump_shared_generation()
    _local_generation[0] += 1


def bump_shared_generation() -> None:
    """Tell every other process (and this one, at its next refresh) to reload policies."""
    if settings.REDIS_URL:
        sync_redis().incr(GENERATION_KEY)
    else:
        path = _generation_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Replaced atomically, so a reader never sees a half-written number.
        scratch = path.with_suffix(f".{os.getpid()}")
        scratch.write_text(str(time.time_ns()))
        scratch.replace(path)


# Bumped in-process too, so the process that made the change never waits for a refresh.
_local_generation = [0]


def local_generation() -> int:
    return _local_generation[0]


def file_generation() -> int:
    try:
        return int(_generation_file().read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _async_redis():
    import redis.asyncio

    # A blocking pool: a burst of requests waits briefly for a connection instead of failing
    # (redis-py's default pool raises "Too many connections" past its limit).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.REDIS_URL,
        max_connections=settings.LLMPROXY_REDIS_POOL_SIZE,
        timeout=10,
        health_check_interval=30,
    )
    return redis.asyncio.Redis(connection_pool=pool)


_async_clients = PerLoop(_async_redis)


def async_redis():
    """The Redis client of the running loop (scaled mode only)."""
    return _async_clients.get()


def read_shared_generation() -> int:
    """``shared_generation`` for a plain thread (the policy cache's watcher)."""
    if settings.REDIS_URL:
        return int(sync_redis().get(GENERATION_KEY) or 0)
    return file_generation()


async def shared_generation() -> int:
    """The generation other processes bump: Redis in scaled mode, a small file otherwise."""
    if settings.REDIS_URL:
        value = await async_redis().get(GENERATION_KEY)
        return int(value or 0)
    return file_generation()
