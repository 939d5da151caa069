"""The least a proxy hop can cost: raw ASGI on uvicorn forwarding bytes with one aiohttp session.

No authentication, policy, headers rules, usage or pricing. The benchmark runs it beside the
gateway so the report separates what any extra hop costs on this machine from what llmproxy
adds on top.

    UPSTREAM=http://127.0.0.1:PORT python -m bench.floor PORT
"""

from __future__ import annotations

import os
import sys

import aiohttp
import uvicorn

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8765")
CREDENTIAL = os.environ.get("UPSTREAM_KEY", "")
_session: list[aiohttp.ClientSession] = []


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    if not _session:
        # No pool limit (aiohttp's default is 100 connections): held-stream runs open
        # thousands at once, as the gateway's pool allows (LLMPROXY_POOL_SIZE).
        connector = aiohttp.TCPConnector(limit=0)
        _session.append(aiohttp.ClientSession(connector=connector, auto_decompress=False))
    headers = {"x-api-key": CREDENTIAL, "content-type": "application/json"}
    url = UPSTREAM + scope["path"]
    async with _session[0].post(url, data=b"".join(parts), headers=headers) as response:
        content_type = response.headers.get("content-type", "").encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", content_type)],
            }
        )
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off")
