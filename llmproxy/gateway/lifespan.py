"""ASGI lifespan: at startup, drain on SIGTERM; on shutdown, hand over queued usage and close
the upstream client."""

from __future__ import annotations

import asyncio
import logging

from llmproxy.core import draining, tracing
from llmproxy.gateway import upstream
from llmproxy.gateway.usage_sink import sink

log = logging.getLogger(__name__)


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            draining.install(asyncio.get_running_loop())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await upstream.close()
            if not await asyncio.to_thread(sink.flush, 30.0):
                log.error("usage events still queued at shutdown")
            await asyncio.to_thread(sink.close_connections)
            await asyncio.to_thread(tracing.flush)
            await send({"type": "lifespan.shutdown.complete"})
            return
