"""A closed-loop load generator: N workers, each sending its next request when one ends."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]  # full response, seconds
    first_bytes: list[float]  # time to the first body chunk, seconds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @staticmethod
    def _quantile(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def ms(self, which: str, q: float) -> float:
        return 1000 * self._quantile(getattr(self, which), q)

    def summary(self) -> dict:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.ms("latencies", 0.5), 3),
            "p99_ms": round(self.ms("latencies", 0.99), 3),
            "ttfb_p50_ms": round(self.ms("first_bytes", 0.5), 3),
            "ttfb_p99_ms": round(self.ms("first_bytes", 0.99), 3),
            "errors": self.errors,
            "requests": self.requests,
            "mean_ms": round(1000 * statistics.fmean(self.latencies), 3) if self.latencies else 0,
        }


def merge(results: list[Result]) -> Result:
    """One result from several runs of the same target (the rounds of an interleaved row)."""
    return Result(
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        seconds=sum(r.seconds for r in results),
        latencies=[x for r in results for x in r.latencies],
        first_bytes=[x for r in results for x in r.first_bytes],
    )


WARMUP = 20  # unmeasured requests at the start of each run
WS_WARMUP = 5  # unmeasured turns per websocket


async def run(
    url: str, headers: dict, body: bytes, *, concurrency: int, requests: int, warmup: int = WARMUP
) -> Result:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(warmup):
            await _one(session, url, headers, body)
        latencies: list[float] = []
        first_bytes: list[float] = []
        errors = 0
        remaining = requests

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                ok, latency, first = await _one(session, url, headers, body)
                if ok:
                    latencies.append(latency)
                    first_bytes.append(first)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Result(len(latencies), errors, seconds, latencies, first_bytes)


async def _one(session, url, headers, body) -> tuple[bool, float, float]:
    started = time.perf_counter()
    first = None
    try:
        async with session.post(url, data=body, headers=headers) as response:
            async for _chunk in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - started
            ok = response.status == 200
    except aiohttp.ClientError:
        return False, 0.0, 0.0
    return ok, time.perf_counter() - started, first or 0.0


async def run_websocket(
    url: str, headers: dict, frame: bytes, *, concurrency: int, requests: int,
    warmup: int = WS_WARMUP,
) -> Result:  # fmt: skip
    """Each worker holds one socket and sends its next response.create when one completes."""
    async with aiohttp.ClientSession() as session:
        latencies: list[float] = []
        first_bytes: list[float] = []
        errors = 0
        remaining = requests

        async def connect():
            socket = await session.ws_connect(url, headers=headers, max_msg_size=0)
            for _ in range(warmup):
                await _turn(socket, frame)
            return socket

        async def worker(socket) -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                ok, latency, first = await _turn(socket, frame)
                if ok:
                    latencies.append(latency)
                    first_bytes.append(first)
                else:
                    errors += 1

        # Connecting and warming up are not part of the measured time.
        sockets = await asyncio.gather(*(connect() for _ in range(concurrency)))
        try:
            started = time.perf_counter()
            await asyncio.gather(*(worker(socket) for socket in sockets))
            seconds = time.perf_counter() - started
        finally:
            await asyncio.gather(*(socket.close() for socket in sockets))
    return Result(len(latencies), errors, seconds, latencies, first_bytes)


async def _turn(socket, frame: bytes) -> tuple[bool, float, float]:
    started = time.perf_counter()
    first = None
    await socket.send_str(frame.decode())
    while True:
        message = await socket.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            return False, 0.0, 0.0
        if first is None:
            first = time.perf_counter() - started
        if '"response.completed"' in message.data:
            return True, time.perf_counter() - started, first
        if '"type":"error"' in message.data:
            return False, 0.0, 0.0
