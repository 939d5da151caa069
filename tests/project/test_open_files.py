"""``llmproxy serve`` and the sockets held streams need: it lifts the soft limit on open files
(each held stream takes two) and asks for a deep accept queue."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import serve_process

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


def listen_backlog(port: int) -> int:
    """The accept queue the kernel gave the listener on this port (ss's Send-Q)."""
    shown = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10,
        check=True,
    ).stdout.split()  # fmt: skip
    return int(shown[2])


@pytest.mark.skipif(
    not shutil.which("ss") or not Path("/proc/sys/net/core/somaxconn").exists(),
    reason="needs ss and Linux",
)
def test_serve_asks_for_a_deep_accept_queue(tmp_path):
    """uvicorn's default (2,048) overflowed on a worker busy with 5,000 held streams, and
    the kernel reset connections (bench/held.py saw it): ``serve`` asks for 8,192, which the
    kernel caps at net.core.somaxconn."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    env = {"PATH": os.environ["PATH"], "DJANGO_DEBUG": "true", "LLMPROXY_DATA_DIR": str(tmp_path)}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with serve_process(env, port):
        assert listen_backlog(port) == min(8192, somaxconn)
