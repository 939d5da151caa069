"""Gateway overhead against a direct call, measured in one run.

    python -m bench [--quick] [--write docs/benchmarks.md]

Starts the fake Anthropic upstream and one gateway worker (uvicorn, embedded mode unless
DATABASE_URL / REDIS_URL are set), then drives both with the same closed-loop load at
concurrency 1, 16, 32 and 64, streaming and not. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench import load

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "samples"
SAMPLE = SAMPLES / "claude_p_messages_request.json"
CODEX_SAMPLE = SAMPLES / "codex_exec_responses_request.json"
UPSTREAM_KEY = "sk-bench-upstream-credential"
NOTES_MARKER = "<!-- notes: kept when bench rewrites this file -->"
MODEL = "claude-haiku-4-5-20251001"
BRIDGED = "bridge-"  # model prefix routed to the OpenAI provider without a websocket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.head(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def request_body(stream: bool, small: bool = False) -> tuple[bytes, str]:
    if SAMPLE.exists() and not small:
        body = json.loads(SAMPLE.read_text())["body"]
        source = f"captured Claude Code request ({SAMPLE.name})"
    else:
        body = {"max_tokens": 1024, "messages": [{"role": "user", "content": "say hi"}]}
        source = "small synthetic request"
    body["model"] = MODEL
    if stream:
        body["stream"] = True
    else:
        body.pop("stream", None)
    return json.dumps(body).encode(), source


def stop(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (aiohttp's server, the fake provider,
    waits up to a minute for open connections: a finished run must not fail on it)."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


class Stack:
    """The fake upstream and the gateway as subprocesses, torn down in any case."""

    def __init__(self, env: dict, stack: ExitStack, workers: int = 1) -> None:
        self.env = env
        self.stack = stack
        self.workers = workers
        self.fake_url = f"http://127.0.0.1:{free_port()}"
        self.gateway_url = f"http://127.0.0.1:{free_port()}"
        self.floor_url = f"http://127.0.0.1:{free_port()}"

    def spawn(self, *argv: str, env: dict | None = None) -> subprocess.Popen:
        process = subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=subprocess.DEVNULL)
        self.stack.callback(stop, process)
        return process

    def manage(self, *argv: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout

    def start(self) -> str:
        fake_port = self.fake_url.rsplit(":", 1)[1]
        self.spawn(sys.executable, "-m", "tests.fakes.fake_provider", "--port", fake_port)
        self.manage("migrate", "-v0")
        common = ["--base-url", self.fake_url, "--api-key", UPSTREAM_KEY]
        self.manage("addprovider", "bench-anthropic", "--kind", "anthropic", *common)
        # Codex's websocket mode goes to the fake's own websocket for gpt-* models, and is
        # bridged to its HTTP SSE endpoint for bridge-* models (a provider without one).
        self.manage("addprovider", "bench-openai", "--kind", "openai", "--websockets",
                    "--models", "gpt-*", *common)  # fmt: skip
        self.manage("addprovider", "bench-openai-bridge", "--kind", "openai",
                    "--models", f"{BRIDGED}*", *common)  # fmt: skip
        secret = self.manage("createkey", "bench").strip().splitlines()[-1]
        port = self.gateway_url.rsplit(":", 1)[1]
        self.gateway_pid = self.spawn(
            sys.executable,
            "-m",
            "llmproxy",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--workers",
            str(self.workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ).pid
        floor_env = {**self.env, "UPSTREAM": self.fake_url, "UPSTREAM_KEY": UPSTREAM_KEY}
        floor_port = self.floor_url.rsplit(":", 1)[1]
        self.floor_pid = self.spawn(
            sys.executable, "-m", "bench.floor", floor_port, env=floor_env
        ).pid
        for url in (self.fake_url, self.gateway_url, self.floor_url):
            wait_until_up(url)
        return secret


def responses_body(small: bool) -> bytes:
    if CODEX_SAMPLE.exists() and not small:
        body = json.loads(CODEX_SAMPLE.read_text())["body"]
    else:
        body = {"input": [{"role": "user", "content": "say hi"}]}
    body["model"] = "gpt-5.5"
    body["stream"] = True
    return json.dumps(body).encode()


# Requests per row by concurrency. The concurrency-1 rows measure per-request overhead, so
# they get enough requests for a stable median.
# Concurrency 32 is the row of the streaming target (issue 13: at least half of direct).
COUNTS = {1: 2000, 16: 1500, 32: 2000, 64: 3000}
QUICK_COUNTS = {1: 100, 16: 300, 32: 400, 64: 600}
WARMUP = 500  # requests through each target before the first row, not measured


ROUNDS = 5
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (uvicorn's workers, the embedded usage writer, started
    by a worker's thread), from each process's parent in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time so far of a process and its descendants (Linux /proc): the
    embedded gateway's usage writer is a child process, and its work is the gateway's. None
    where there is no /proc."""
    try:
        own = _stat(pid)
    except (OSError, TypeError):
        return None
    total = int(own[11]) + int(own[12])
    for child in descendants(pid):
        try:
            fields = _stat(child)
        except OSError:
            continue  # ended meanwhile
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def cpu_per_request_us(before: float | None, pid: int | None, served: int) -> float | None:
    """CPU a process spent per request it served: wall-clock noise does not enter."""
    after = cpu_seconds(pid)
    if before is None or after is None or not served:
        return None
    return round((after - before) / served * 1e6)


async def interleaved(targets: dict, concurrency: int, requests: int) -> dict[str, load.Result]:
    """Run the targets of one row in alternating rounds, so that the machine's drift during
    the row (other tenants, clock changes) falls on every target alike, not on one.

    ``targets``: name -> (runner, url, headers, payload).
    """
    parts: dict[str, list[load.Result]] = {name: [] for name in targets}
    for _ in range(ROUNDS):
        for name, (run, url, headers, payload) in targets.items():
            result = await run(url, headers, payload, concurrency=concurrency,
                               requests=max(1, requests // ROUNDS))  # fmt: skip
            parts[name].append(result)
    return {name: load.merge(results) for name, results in parts.items()}


def scenarios(quick: bool):
    counts = COUNTS if not quick else QUICK_COUNTS
    for stream in (False, True):
        for concurrency, requests in counts.items():
            yield stream, concurrency, requests


async def warm_up(stack: Stack, secret: str, small: bool) -> None:
    """Every process serves a few hundred requests before anything is measured."""
    body, _ = request_body(False, small)
    common = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    for url, credential in (
        (stack.fake_url, {"x-api-key": UPSTREAM_KEY}),
        (stack.floor_url, {}),
        (stack.gateway_url, {"x-api-key": secret}),
    ):
        await load.run(url + "/v1/messages?beta=true", {**common, **credential}, body,
                       concurrency=1, requests=WARMUP)  # fmt: skip


async def measure(stack: Stack, secret: str, quick: bool, small: bool) -> list[dict]:
    rows = []
    if not quick:
        await warm_up(stack, secret, small)
    for stream, concurrency, requests in scenarios(quick):
        body, _ = request_body(stream, small)
        common = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        url = "/v1/messages?beta=true"
        cpu = {"gateway": cpu_seconds(stack.gateway_pid), "floor": cpu_seconds(stack.floor_pid)}
        measured = await interleaved(
            {
                "direct": (load.run, stack.fake_url + url,
                           {**common, "x-api-key": UPSTREAM_KEY}, body),
                "floor": (load.run, stack.floor_url + url, common, body),
                "gateway": (load.run, stack.gateway_url + url,
                            {**common, "x-api-key": secret}, body),
            },
            concurrency, requests,
        )  # fmt: skip
        direct, floor, gateway = measured["direct"], measured["floor"], measured["gateway"]
        served = gateway.requests + gateway.errors + ROUNDS * load.WARMUP
        row = {
            "path": "/v1/messages " + ("stream" if stream else "non-stream"),
            "concurrency": concurrency,
            "direct": direct.summary(),
            "floor": floor.summary(),
            "gateway": gateway.summary(),
        }
        row["floor_p50_ms"] = round(row["floor"]["p50_ms"] - row["direct"]["p50_ms"], 3)
        row["overhead_p50_ms"] = round(row["gateway"]["p50_ms"] - row["direct"]["p50_ms"], 3)
        row["overhead_ttfb_p50_ms"] = round(
            row["gateway"]["ttfb_p50_ms"] - row["direct"]["ttfb_p50_ms"], 3
        )
        row["rps_ratio"] = round(gateway.rps / direct.rps, 3) if direct.rps else None
        row["gateway_cpu_us"] = cpu_per_request_us(cpu["gateway"], stack.gateway_pid, served)
        row["floor_cpu_us"] = cpu_per_request_us(cpu["floor"], stack.floor_pid, served)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    rows += await measure_responses(stack, secret, quick, small)
    return rows


async def measure_responses(stack: Stack, secret: str, quick: bool, small: bool) -> list[dict]:
    """Codex's paths: streaming /v1/responses over HTTP, and the websocket mode.

    Websocket "direct" is the fake provider's own websocket. Through the gateway the socket
    goes to that websocket (a provider marked ``websockets``), or is bridged to the provider's
    HTTP SSE endpoint (a provider without one).
    """
    rows = []
    body = responses_body(small)
    frame = json.dumps({"type": "response.create", **json.loads(body)}).encode()
    bridged = json.loads(frame)
    bridged["model"] = BRIDGED + bridged["model"]
    bridged_frame = json.dumps(bridged).encode()
    counts = COUNTS if not quick else QUICK_COUNTS
    for concurrency, requests in counts.items():
        for path, run, payload, gateway_payload in (
            ("/v1/responses stream", load.run, body, body),
            ("/v1/responses websocket", load.run_websocket, frame, frame),
            ("/v1/responses websocket → HTTP bridge", load.run_websocket, frame, bridged_frame),
        ):
            base = stack.fake_url if run is load.run else stack.fake_url.replace("http", "ws", 1)
            gate = base.replace(stack.fake_url.split("//")[1], stack.gateway_url.split("//")[1])
            before = cpu_seconds(stack.gateway_pid)
            measured = await interleaved(
                {
                    "direct": (run, base + "/v1/responses",
                               {"authorization": f"Bearer {UPSTREAM_KEY}"}, payload),
                    "gateway": (run, gate + "/v1/responses",
                                {"authorization": f"Bearer {secret}"}, gateway_payload),
                },
                concurrency, requests,
            )  # fmt: skip
            direct, gateway = measured["direct"], measured["gateway"]
            row = {"path": path, "concurrency": concurrency,
                   "direct": direct.summary(), "gateway": gateway.summary()}  # fmt: skip
            row["overhead_p50_ms"] = round(
                gateway.ms("latencies", 0.5) - direct.ms("latencies", 0.5), 3
            )
            row["overhead_ttfb_p50_ms"] = round(
                gateway.ms("first_bytes", 0.5) - direct.ms("first_bytes", 0.5), 3
            )
            row["floor_p50_ms"] = None
            row["rps_ratio"] = round(gateway.rps / direct.rps, 3) if direct.rps else None
            warmup = load.WARMUP if run is load.run else load.WS_WARMUP * concurrency
            served = gateway.requests + gateway.errors + ROUNDS * warmup
            row["gateway_cpu_us"] = cpu_per_request_us(before, stack.gateway_pid, served)
            row["floor_cpu_us"] = None
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict], command: str, source: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Gateway overhead against a direct call to the same fake upstream, in the same run.",
        "",
        f"Command: `{command}`",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "- one gateway worker (uvicorn, uvloop, httptools); the fake upstream and the load "
        "generator are separate processes on the same machine",
        "- bare hop: `bench/floor.py`, raw ASGI forwarding bytes with one aiohttp session and "
        "nothing else, measured in the same run: what any proxy hop costs here",
        f"- request body: {source}",
        "- mode: " + ("scaled" if os.environ.get("REDIS_URL") else "embedded"),
        "",
        "| path | conc. | direct rps | gateway rps | ratio | direct p50 / p99 ms "
        "| gateway p50 / p99 ms | gateway +p50 ms | bare-hop +p50 ms | +TTFB p50 ms "
        "| gateway / bare-hop CPU µs per request | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d, g = row["direct"], row["gateway"]
        lines.append(
            f"| {row['path']} | {row['concurrency']} | {d['rps']} | {g['rps']} | "
            f"{row['rps_ratio']} | {d['p50_ms']} / {d['p99_ms']} | {g['p50_ms']} / {g['p99_ms']} | "
            f"{row['overhead_p50_ms']} | {row['floor_p50_ms']} | "
            f"{row['overhead_ttfb_p50_ms']} | {row['gateway_cpu_us']} / {row['floor_cpu_us']} | "
            f"{d['errors']}/{g['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--write", type=Path, help="also write the markdown report here")
    parser.add_argument(
        "--small-body", action="store_true", help="a tiny request instead of Claude Code's 76 KB"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmproxy-bench-") as data_dir, ExitStack() as stack:
        env = {
            **os.environ,
            "DJANGO_SECRET_KEY": "bench-secret-key",
            "DJANGO_DEBUG": "false",
            "LLMPROXY_DATA_DIR": data_dir,
            "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true",  # the fake provider is on loopback
            "DJANGO_LOG_LEVEL": "WARNING",
        }
        runner = Stack(env, stack)
        secret = runner.start()
        rows = asyncio.run(measure(runner, secret, args.quick, args.small_body))
    command = "python -m bench" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    report = markdown(rows, command, request_body(False, args.small_body)[1])
    print(report)
    if args.write:
        # Keep the hand-written analysis below the marker when the numbers are refreshed.
        notes = ""
        if args.write.exists() and NOTES_MARKER in args.write.read_text():
            notes = args.write.read_text().split(NOTES_MARKER, 1)[1]
        args.write.write_text(report + "\n" + NOTES_MARKER + notes)


if __name__ == "__main__":
    main()
