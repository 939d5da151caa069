"""Usage not delivered when a process stops: one JSON-lines file per write in
``LLMPROXY_USAGE_SPOOL_DIR``, replayed at the next start and by ``manage.py replayusage``.

A file appears whole (written under a temporary name, then renamed) and is claimed by
renaming it before it is read, so two processes starting on one host never replay the same
file. Replaying writes through ``services.record_usage_events``: idempotent by request id, so
an event that reached the ledger after all (or that is spooled twice) is stored once.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings

from billing import services

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


def directory() -> Path:
    return Path(settings.LLMPROXY_USAGE_SPOOL_DIR)


def write(events: Iterable[dict[str, Any]]) -> Path | None:
    """Persist wire events; returns the file, or None when there was nothing to write."""
    lines = [json.dumps(event, ensure_ascii=True) + "\n" for event in events]
    if not lines:
        return None
    folder = directory()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = folder / f".{name}.tmp"
    with partial.open("w") as out:
        out.writelines(lines)
        out.flush()
        os.fsync(out.fileno())
    path = folder / f"{name}{SUFFIX}"
    partial.rename(path)
    log.warning("%d usage events spooled to %s", len(lines), path)
    return path


def pending() -> list[Path]:
    folder = directory()
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def replay() -> int:
    """Write every spooled event to the ledger; returns how many were new. A file is removed
    once written; one that cannot be written now (database down) is put back for later."""
    written = 0
    for path in pending():
        claimed = path.with_name(f".{path.name}.replaying-{os.getpid()}")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            continue  # another process took it
        try:
            written += services.record_usage_events(_read(claimed))
        except BaseException:
            claimed.rename(path)
            raise
        claimed.unlink()
    return written


def _read(path: Path) -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            # A line cut short (the disk filled up): kept, not lost, in the dead letters.
            events.append({"unreadable_line": line, "file": path.name, "line": number})
            log.error("spool %s line %d unreadable: %s", path, number, exc)
    return events
