"""The Makefile targets the README shows, and what the checkout keeps out of git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_port_reaches_the_admin_url_and_the_server():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", "run", "PORT=8001"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("manage.py bootstrap --url http://127.0.0.1:8001" in line for line in lines)
    assert any("-m llmproxy serve" in line and "--port 8001" in line for line in lines)
    assert not any("8000" in line for line in lines)


def test_gitignore_covers_what_celery_beat_and_schemathesis_write():
    inside = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, timeout=60
    )
    if inside.returncode != 0:
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "celerybeat-schedule", "celerybeat-schedule.db",
         ".schemathesis/report.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ignored.stdout.split() == [
        "celerybeat-schedule",
        "celerybeat-schedule.db",
        ".schemathesis/report.json",
    ]
