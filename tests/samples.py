"""The requests and streams captured from the real Claude Code and Codex CLIs (../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "protocols" / "samples"


def sample_bytes(name: str) -> bytes:
    path = SAMPLES / name
    if not path.exists():
        pytest.fail(f"protocol sample {path} is missing (../shared must sit beside the checkout)")
    return path.read_bytes()


def captured_request(name: str) -> dict:
    """A captured request: method, path, query, headers as [name, value] pairs, body."""
    return json.loads(sample_bytes(name))


def asgi_headers(captured: dict) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in captured["headers"]]
