"""The embedded mode's usage writer: a child process that stores the gateway's usage batches.

Storing a batch (the INSERT, its rollups, the keys' last use) is milliseconds of Python with
the GIL held; done in a thread of the gateway, the event loop waits for it after every
socket event, which showed as the p99 of a quiet gateway (docs/benchmarks.md, "The tail").
The usage sink (``llmproxy.gateway.usage_sink``) hands each batch to this process instead:
encoding it and a pipe write are all the gateway's process does, and the reply comes back
while the sink's thread waits without the GIL. The scaled mode has the Celery worker.

Nothing is lost or stored twice on the way, whatever happens to the child:

- the sink counts a batch delivered only when the child answered that it is stored; a child
  that died (or did not answer in time) is started again and given the batch again, and a
  replay inserts nothing twice (``services.record_usage_batch`` skips known request ids);
- a database error the child meets comes back as that error: transient ones are retried by
  the sink with its backoff, others spool the batch like any failed delivery;
- a child that cannot start, or that would write to another database than the gateway's
  own (a test database, a setting only the parent process has), is given up for good and
  the sink writes in its own thread as before.

The protocol, on the child's stdin and stdout: frames of a 4-byte big-endian length and a
msgpack body. The child first sends ``{"ready": pid, "database": [...]}``; then, per batch
(a list of usage records), ``{"written": n, "dead": n}`` or ``{"error": kind, "message":
text}``. It exits at the end of its stdin, so it never outlives the gateway, and ignores
the terminal's signals (a Ctrl-C is the gateway's to handle: it still flushes through here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import msgspec

from billing.records import UsageRecord

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# A frame's first byte: what the child is asked to do with the rest.
_STORE, _SEND, _RECORDED = b"s", b"p", b"r"
_MAX_FRAME = 256 * 1024 * 1024
# Starting the child is Django's setup (about a second; more on a loaded host).
START_SECONDS = 60.0
# A batch's answer: the database's own lock timeouts are far shorter. A child that takes
# longer is stopped and the batch given to a new one.
ANSWER_SECONDS = 120.0
# Children that exit before they are ready, in a row, before the process path is given up.
_START_FAILURES = 3


class Unavailable(Exception):
    """The writer process is not there or did not answer; the batch is still the sink's."""


class Refused(Exception):
    """The writer stored nothing of the batch for an error that is not the database being
    away (the message is the child's)."""


class Disabled(Exception):
    """This process writes usage in its own thread from now on (see the module's docstring)."""


def database_identity(settings_dict: dict[str, Any]) -> list[str]:
    """What names a database: two processes with the same identity write the same ledger."""
    return [str(settings_dict.get(name) or "") for name in ("ENGINE", "NAME", "HOST", "PORT")]


class WriterProcess:
    """The gateway's side: one child, started at startup (``prepare``) or on first use; the
    sink's thread asks it, one request at a time."""

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder()
        self._failed_starts = 0
        self.disabled = False
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def store(self, records: list[UsageRecord]) -> tuple[int, int]:
        """Embedded mode: store a batch in the ledger; (events written, dead-lettered).

        Raises ``Unavailable`` (the child is gone or slow, or the database away: try again),
        ``Disabled`` (write in this process from now on) or ``Refused``. Whatever it raises,
        the batch may or may not be stored: a retry inserts nothing twice.
        """
        answer = self._ask(_STORE, self._encoder.encode(records))
        return int(answer["written"]), int(answer["dead"])

    def send(self, records: list[UsageRecord]) -> None:
        """Scaled mode: hand a batch to the broker (``billing.tasks.record_usage_batch``);
        raises as ``store`` does (a batch sent twice is stored once)."""
        self._ask(_SEND, self._encoder.encode(records))

    def recorded(self, request_ids: list[str]) -> set[str]:
        """Which of these request ids the ledger holds (the sink's delivery check)."""
        return set(self._ask(_RECORDED, self._encoder.encode(request_ids))["held"])

    def _ask(self, op: bytes, body: bytes) -> dict[str, Any]:
        with self._lock:
            if self.disabled:
                raise Disabled("usage writer process given up")
            child = self._child or self._start()
            try:
                _send(child, op + body)
                answer = self._decoder.decode(_receive(child, ANSWER_SECONDS))
            except (OSError, Unavailable, msgspec.DecodeError) as exc:
                self._stop(child)
                raise Unavailable(f"usage writer process: {exc}") from exc
        error = answer.get("error")
        if error == "transient":
            raise Unavailable(f"usage writer process: {answer.get('message')}")
        if error:
            raise Refused(answer.get("message") or error)
        return answer

    def prepare(self) -> None:
        """Start the child now, so the first batch does not wait for Django's setup in it
        (a failure here is the first batch's to retry)."""
        with self._lock:
            if self._child is None and not self.disabled:
                try:
                    self._start()
                except (Unavailable, Disabled):
                    log.warning("usage writer process not started yet", exc_info=True)

    def close(self, timeout: float = 10.0) -> None:
        """End the child (the end of its stdin); the next request starts another."""
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()
            child.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
        finally:
            child.stdout.close()

    def _start(self) -> subprocess.Popen:
        from django.conf import settings
        from django.db import connections

        expected = database_identity(connections["default"].settings_dict)
        env = dict(os.environ)
        # The child's metrics are not scraped: the gateway counts what it reports.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("LLMPROXY_METRICS_DIR_FILE", None)
        env["LLMPROXY_METRICS_DIR"] = ""
        env["PYTHONPATH"] = os.pathsep.join(
            [str(settings.BASE_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
        env.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "billing.writer"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                start_new_session=True,  # the terminal's Ctrl-C goes to the gateway alone
            )
        except OSError as exc:
            self._start_failed(f"not started: {exc}")
        try:
            ready = self._decoder.decode(_receive(child, START_SECONDS))
        except (OSError, Unavailable, msgspec.DecodeError) as exc:
            self._stop(child)
            self._start_failed(f"did not start: {exc}")
        if ready.get("database") != expected:
            self._stop(child)
            self.disabled = True
            log.warning(
                "usage writer process would write to another database (%s, not %s); "
                "usage is written in the gateway's own thread",
                ready.get("database"),
                expected,
            )
            raise Disabled("usage writer process writes elsewhere")
        self._failed_starts = 0
        self._child = child
        return child

    def _start_failed(self, why: str) -> None:
        self._failed_starts += 1
        if self._failed_starts >= _START_FAILURES:
            self.disabled = True
            log.error("usage writer process %s; usage is written in the gateway's thread", why)
            raise Disabled(why)
        raise Unavailable(f"usage writer process {why}")

    def _stop(self, child: subprocess.Popen) -> None:
        if self._child is child:
            self._child = None
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def _send(child: subprocess.Popen, body: bytes) -> None:
    child.stdin.write(_LENGTH.pack(len(body)) + body)
    child.stdin.flush()


def _receive(child: subprocess.Popen, timeout: float) -> bytes:
    fd = child.stdout.fileno()
    header = _read_exactly(fd, _LENGTH.size, time.monotonic() + timeout)
    (length,) = _LENGTH.unpack(header)
    if length > _MAX_FRAME:
        raise Unavailable(f"a {length}-byte answer")
    return _read_exactly(fd, length, time.monotonic() + timeout)


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    chunks, left = [], size
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise Unavailable("no answer in time")
        chunk = os.read(fd, left)
        if not chunk:
            raise Unavailable("exited")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# The child.


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it ends with its stdin, after the flush
    # Frames go on a private copy of stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    source = sys.stdin.buffer

    import django

    django.setup()
    import kombu.exceptions
    from django.db import close_old_connections, connections
    from prometheus_client import REGISTRY

    from billing import services, tasks

    encoder = msgspec.msgpack.Encoder()
    records = msgspec.msgpack.Decoder(list[UsageRecord])
    request_ids = msgspec.msgpack.Decoder(list[str])
    database = database_identity(connections["default"].settings_dict)
    _write_frame(out, encoder.encode({"ready": os.getpid(), "database": database}))

    def dead_lettered() -> float:
        return REGISTRY.get_sample_value("llmproxy_usage_events_dead_lettered_total") or 0.0

    def store(body: bytes) -> dict[str, Any]:
        before = dead_lettered()
        written = services.record_usage_batch(records.decode(body))
        return {"written": written, "dead": int(dead_lettered() - before)}

    def send(body: bytes) -> dict[str, Any]:
        batch = records.decode(body)
        tasks.record_usage_batch.delay([record.to_wire() for record in batch])
        return {"sent": len(batch)}

    def recorded(body: bytes) -> dict[str, Any]:
        return {"held": sorted(services.recorded_request_ids(request_ids.decode(body)))}

    handlers = {_STORE: store, _SEND: send, _RECORDED: recorded}
    while (frame := _read_frame(source)) is not None:
        try:
            answer = handlers[frame[:1]](frame[1:])
        except (*services.TRANSIENT_ERRORS, kombu.exceptions.OperationalError) as exc:
            close_old_connections()  # a connection that failed is not used again
            answer = {"error": "transient", "message": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a frame the service could not take at all
            log.exception("usage writer: request not done")
            answer = {"error": "failed", "message": f"{type(exc).__name__}: {exc}"}
        _write_frame(out, encoder.encode(answer))
    connections.close_all()


def _read_frame(source) -> bytes | None:
    header = source.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    body = source.read(length)
    return body if len(body) == length else None


def _write_frame(out, body: bytes) -> None:
    out.write(_LENGTH.pack(len(body)) + body)
    out.flush()


if __name__ == "__main__":
    main()
