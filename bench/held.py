"""Held streams: many slow, long answers open at once through one gateway worker.

    python -m bench.held [--streams 100,1000,5000] [--seconds 30] [--workers 1,2] [--write F]

Each stream is Claude Code's shape: an event every 50-100 ms for ``--seconds``. The fake
upstream stamps every event with the time it wrote it, so the client measures each event's
delay; the same streams straight to the fake, in the same run, give the floor, and through
the bare hop (``bench/floor.py``, beside one gateway worker) what any Python proxy hop adds.
Reported per stream count: the added inter-chunk delay (gateway delay minus direct delay,
p50 and p99, and the bare hop's), the streams that failed and what they died of (an HTTP
error, an error event, an exception, or an end without message_stop), the gateway's peak
RSS and the CPU time per relayed event of the gateway and of the bare hop.
Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shlex
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from bench.__main__ import MODEL, Stack, cpu_seconds, descendants

NOTES_MARKER = "<!-- held streams: notes kept when bench.held rewrites its section -->"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(pids: list[int]) -> float:
    """RSS of these processes (a gateway, its workers and their usage writers): the list is
    made once per run (scanning /proc for descendants in the load generator's loop on every
    sample would delay the streams it measures)."""
    total = 0.0
    for pid in pids:
        try:
            total += rss_mb(pid)
        except OSError:
            continue  # ended meanwhile
    return total


def body(seconds: float) -> bytes:
    interval = random.uniform(0.05, 0.1)
    return json.dumps({
        "model": MODEL, "max_tokens": 10_000, "stream": True,
        "messages": [{"role": "user", "content": "hold"}],
        "metadata": {"fake_hold": {"events": int(seconds / interval), "interval": interval}},
    }).encode()  # fmt: skip


async def one_stream(session, url: str, headers: dict, seconds: float, delays: list) -> str:
    """Relay one held stream; '' when it ended with its message_stop, else why not."""
    try:
        async with session.post(url + "/v1/messages", data=body(seconds), headers=headers) as r:
            if r.status != 200:
                return f"HTTP {r.status}"
            buffer = b""
            stopped = False
            async for chunk in r.content.iter_any():
                now = time.time()
                buffer += chunk
                stopped = stopped or b"event: message_stop" in buffer
                while b'"text":"' in buffer:
                    start = buffer.index(b'"text":"') + 8
                    end = buffer.find(b'"', start)
                    if end < 0:
                        break
                    stamp = buffer[start:end]
                    if stamp.endswith(b";"):
                        delays.append(now - float(stamp[:-1]))
                    buffer = buffer[end + 1 :]
                if b"event: error" in buffer:
                    return "error event"
            return "" if stopped else "cut short"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return type(exc).__name__


async def run(url: str, headers: dict, streams: int, seconds: float) -> tuple[list, Counter]:
    delays: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=seconds * 4 + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def staggered(index: int) -> str:
            await asyncio.sleep(index * min(0.002, 5 / streams))  # open over a few seconds
            return await one_stream(session, url, headers, seconds, delays)

        results = await asyncio.gather(*(staggered(i) for i in range(streams)))
    return delays, Counter(reason for reason in results if reason)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _sample(pid: int, peak: list[float]) -> None:
    pids = [pid, *descendants(pid)]
    while True:
        peak.append(tree_rss_mb(pids))
        await asyncio.sleep(0.5)


async def measure(stack: Stack, secret: str, counts: list[int], seconds: float) -> list[dict]:
    rows = []
    for streams in counts:
        direct, direct_errors = await run(stack.fake_url, {}, streams, seconds)
        bare: list[float] = []
        bare_errors: Counter = Counter()
        bare_cpu = None
        if stack.workers == 1:  # the bare hop is one process: beside one gateway worker
            cpu_before = cpu_seconds(stack.floor_pid) or 0.0
            bare, bare_errors = await run(stack.floor_url, {}, streams, seconds)
            bare_cpu = (cpu_seconds(stack.floor_pid) or 0.0) - cpu_before
        peak: list[float] = []
        cpu_before = cpu_seconds(stack.gateway_pid)
        sampler = asyncio.ensure_future(_sample(stack.gateway_pid, peak))
        gateway, gateway_errors = await run(
            stack.gateway_url, {"x-api-key": secret}, streams, seconds
        )
        sampler.cancel()
        cpu = cpu_seconds(stack.gateway_pid) - cpu_before
        row = {
            "streams": streams,
            "workers": stack.workers,
            "events": len(gateway),
            "direct_p50_ms": round(quantile(direct, 0.5) * 1000, 2),
            "direct_p99_ms": round(quantile(direct, 0.99) * 1000, 2),
            "gateway_p50_ms": round(quantile(gateway, 0.5) * 1000, 2),
            "gateway_p99_ms": round(quantile(gateway, 0.99) * 1000, 2),
            "errors": f"{direct_errors.total()}/{gateway_errors.total()}",
            "why": "; ".join(
                f"{side}: " + ", ".join(f"{why} ({n})" for why, n in reasons.items())
                for side, reasons in (
                    ("direct", direct_errors),
                    ("bare hop", bare_errors),
                    ("gateway", gateway_errors),
                )
                if reasons
            ),
            "gateway_rss_mb": round(max(peak), 1),
            "gateway_cpu_us_per_event": round(cpu / len(gateway) * 1e6) if gateway else None,
            "bare_added_p50_ms": None,
            "bare_added_p99_ms": None,
            "bare_failed": None,
            "bare_cpu_us_per_event": None,
        }
        row["added_p50_ms"] = round(row["gateway_p50_ms"] - row["direct_p50_ms"], 2)
        row["added_p99_ms"] = round(row["gateway_p99_ms"] - row["direct_p99_ms"], 2)
        if bare_cpu is not None:
            for q, name in ((0.5, "bare_added_p50_ms"), (0.99, "bare_added_p99_ms")):
                row[name] = round((quantile(bare, q) - quantile(direct, q)) * 1000, 2)
            row["bare_failed"] = bare_errors.total()
            row["bare_cpu_us_per_event"] = round(bare_cpu / len(bare) * 1e6) if bare else None
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], command: str, seconds: float) -> str:
    lines = [
        "## Held streams",
        "",
        f"Command: `{command}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} cores. Each stream: an event every 50-100 ms for {seconds:g} s.",
        "",
        "The bare hop (`bench/floor.py`, one process relaying bytes with aiohttp and nothing "
        "else) carries the same streams in the same run, beside one gateway worker: what any "
        "Python proxy hop does here.",
        "",
        "| workers | streams | events | direct p50 / p99 ms | gateway p50 / p99 ms "
        "| added p50 / p99 ms | bare hop added p50 / p99 ms | failed streams (direct/gateway) "
        "| bare hop failed | gateway RSS MB | gateway / bare hop CPU µs per event |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['streams']} | {r['events']} | {r['direct_p50_ms']} / "
            f"{r['direct_p99_ms']} | {r['gateway_p50_ms']} / {r['gateway_p99_ms']} | "
            f"{r['added_p50_ms']} / {r['added_p99_ms']} | "
            f"{r['bare_added_p50_ms']} / {r['bare_added_p99_ms']} | {r['errors']} | "
            f"{r['bare_failed']} | {r['gateway_rss_mb']} | "
            f"{r['gateway_cpu_us_per_event']} / {r['bare_cpu_us_per_event']} |"
        )
    failed = [r for r in rows if r["why"]]
    if failed:
        lines.append("")
        lines += [f"- {r['workers']} worker(s), {r['streams']} streams: {r['why']}" for r in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.held")
    parser.add_argument("--streams", default="100,1000,5000")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", default="1")
    parser.add_argument("--write", type=Path, help="replace the held-stream section of this file")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets
    counts = [int(n) for n in args.streams.split(",")]
    rows: list[dict] = []
    for workers in (int(n) for n in args.workers.split(",")):
        with tempfile.TemporaryDirectory(prefix="llmproxy-held-") as data_dir, ExitStack() as es:
            env = {**os.environ, "DJANGO_SECRET_KEY": "bench-secret-key", "DJANGO_DEBUG": "false",
                   "LLMPROXY_DATA_DIR": data_dir, "DJANGO_LOG_LEVEL": "WARNING",
                   "LLMPROXY_ENV_FILE": "", "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true"}  # fmt: skip
            stack = Stack(env, es, workers=workers)
            secret = stack.start()
            rows += asyncio.run(measure(stack, secret, counts, args.seconds))
    command = "python -m bench.held" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    report = markdown(rows, command, args.seconds)
    print(report)
    if args.write:
        text = args.write.read_text() if args.write.exists() else ""
        before = text.split("## Held streams", 1)[0].rstrip() + "\n\n" if text else ""
        notes = text.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in text else "\n"
        args.write.write_text(before + report + "\n" + NOTES_MARKER + notes)


if __name__ == "__main__":
    main()
