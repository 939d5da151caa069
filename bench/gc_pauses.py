"""Garbage-collection pauses inside one gateway worker, the suspect of a p99 far above p50.

    python -m bench.gc_pauses [--requests 2000]

Starts the bench stack (the fake provider and one gateway worker, embedded mode) with a
hook (bench/gchook) that times every collection in the gateway process, sends 100 warm-up
requests, then ``--requests`` sequential non-streamed calls, and prints the collections
made while those were served: how many per generation, the longest and the total. A full
(generation 2) collection walks every live object, Django and the app included, and runs
inside whichever request allocates at that moment; the gateway freezes what it loaded at
startup (``gc.freeze()`` in ``llmproxy/gateway/lifespan.py``) so that it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.__main__ import Stack

HOOK = Path(__file__).resolve().parent / "gchook"
WARM_UP = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, ExitStack() as stack:
        out = os.path.join(data, "gc")
        env = {
            "PATH": os.environ["PATH"], "LLMPROXY_DATA_DIR": data, "LLMPROXY_ENV_FILE": "",
            "DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "bench-" * 10,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1", "PYTHONPATH": str(HOOK), "BENCH_GC_OUT": out,
            "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true",  # the fake provider is on loopback
        }  # fmt: skip
        bench = Stack(env, stack)
        secret = bench.start()
        body = {"model": "claude-haiku-4-5", "max_tokens": 10,
                "messages": [{"role": "user", "content": "x" * 2000}]}  # fmt: skip
        latencies = []
        with httpx.Client(timeout=30) as client:
            for i in range(WARM_UP + args.requests):
                if i == WARM_UP:
                    os.kill(bench.gateway_pid, signal.SIGUSR2)
                started = time.perf_counter()
                response = client.post(
                    bench.gateway_url + "/v1/messages", json=body, headers={"x-api-key": secret}
                )
                response.raise_for_status()
                if i >= WARM_UP:
                    latencies.append((time.perf_counter() - started) * 1000)
        os.kill(bench.gateway_pid, signal.SIGUSR1)
        report = Path(f"{out}.{bench.gateway_pid}")
        deadline = time.monotonic() + 10
        while not report.exists():
            if time.monotonic() > deadline:
                sys.exit("the gateway wrote no collection report")
            time.sleep(0.1)
        time.sleep(0.2)
        pauses = json.loads(report.read_text())["pauses_ms"]
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(f"{args.requests} requests: end-to-end p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    for generation, found in pauses.items():
        longest = max(found, default=0.0)
        print(f"  generation {generation}: {len(found)} collections, longest {longest:.2f} ms, "
              f"total {sum(found):.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
