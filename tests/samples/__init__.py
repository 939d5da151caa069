"""The requests and streams captured from the real Claude Code and Codex CLIs (README.md)."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def captured_request(name: str) -> dict:
    """A captured request: method, path, query, headers as [name, value] pairs, body."""
    return json.loads(sample_bytes(name))


def asgi_headers(captured: dict) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in captured["headers"]]
