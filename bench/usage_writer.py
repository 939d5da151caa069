"""The embedded usage writer in a child process against in the worker's own thread, side by
side with a direct call, in one run.

    python -m bench.usage_writer [--requests 2000] [--rounds 10]

Starts two gateway workers (embedded mode, each with its own fake provider and scratch data
directory), one with ``LLMPROXY_USAGE_WRITER_PROCESS=true`` and one with ``false``, and
drives them and the direct path in alternating rounds at concurrency 1 with a small request:
the tail this module's child exists for (docs/benchmarks.md, "The tail"). CPU per request is
each gateway's, its writer process included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from contextlib import ExitStack

from bench import load
from bench.__main__ import UPSTREAM_KEY, Stack, cpu_seconds, request_body

MODES = {"writer process": "true", "usage thread": "false"}
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(stacks: dict, requests: int, rounds: int) -> dict:
    body, _ = request_body(False, small=True)
    common = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    path = "/v1/messages?beta=true"
    latencies: dict[str, list[float]] = {"direct": [], **{mode: [] for mode in stacks}}
    served = dict.fromkeys(stacks, 0)
    before = {mode: cpu_seconds(stack.gateway_pid) for mode, (stack, _) in stacks.items()}
    for _ in range(rounds):
        stack, _ = stacks["writer process"]
        direct = await load.run(stack.fake_url + path, {**common, "x-api-key": UPSTREAM_KEY},
                                body, concurrency=1, requests=requests)  # fmt: skip
        latencies["direct"] += direct.latencies
        for mode, (stack, secret) in stacks.items():
            result = await load.run(stack.gateway_url + path, {**common, "x-api-key": secret},
                                    body, concurrency=1, requests=requests)  # fmt: skip
            latencies[mode] += result.latencies
            served[mode] += result.requests + result.errors + load.WARMUP
    report = {"requests per target": requests * rounds}
    for name, values in latencies.items():
        report[name] = {f"p{q * 100:g} ms": round(quantile(values, q), 3) for q in QUANTILES}
    for mode, (stack, _) in stacks.items():
        spent = cpu_seconds(stack.gateway_pid) - before[mode]
        report[mode]["added"] = {
            f"p{q * 100:g} ms": round(quantile(latencies[mode], q)
                                      - quantile(latencies["direct"], q), 3)
            for q in QUANTILES
        }  # fmt: skip
        report[mode]["CPU µs per request"] = round(spent / served[mode] * 1e6)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_writer")
    parser.add_argument("--requests", type=int, default=2000, help="per target and round")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with ExitStack() as stack:
        stacks = {}
        for mode, value in MODES.items():
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="llmproxy-bench-"))
            env = {
                **os.environ,
                "DJANGO_SECRET_KEY": "bench-secret-key",
                "DJANGO_DEBUG": "false",
                "LLMPROXY_DATA_DIR": data_dir,
                "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true",
                "DJANGO_LOG_LEVEL": "WARNING",
                "LLMPROXY_USAGE_WRITER_PROCESS": value,
            }
            for name in ("DATABASE_URL", "REDIS_URL"):  # the embedded mode's writer
                env.pop(name, None)
            runner = Stack(env, stack)
            stacks[mode] = (runner, runner.start())
        report = asyncio.run(measure(stacks, args.requests, args.rounds))
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
