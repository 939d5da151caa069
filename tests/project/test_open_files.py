"""``llmproxy serve`` lifts the soft limit on open files: each held stream takes two."""

from __future__ import annotations

import resource
import subprocess
import sys

PROBE = (
    "import resource; from llmproxy.server import raise_open_files_limit; "
    "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
)


def test_the_soft_limit_on_open_files_is_lifted_to_the_hard_one():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    result = subprocess.run(
        [sys.executable, "-c", PROBE], preexec_fn=lower, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    returned, in_force = (int(n) for n in result.stdout.split())
    expected = hard if hard != resource.RLIM_INFINITY else 1_048_576
    assert returned == in_force == expected
    assert in_force > low or hard == low
