"""Hands usage events from the response path to Celery without blocking it.

The event loop only appends to a thread-safe queue. One daemon thread per process drains it
in batches and submits ``billing.tasks.record_usage_batch``: to the broker in scaled mode; in
embedded (eager) mode it hands the batch to the usage writer process (``billing.writer``) and
waits for its answer, or, with ``LLMPROXY_USAGE_WRITER_PROCESS`` off or no writer process to
be had, stores it right there (the ORM is fine in a plain thread). A failed submission is
retried with backoff; events stay queued meanwhile.

No event is lost on the way (docs/operations.md, "The ledger"):

- a batch the database refuses is stored row by row by the service, and a row it still
  refuses is dead-lettered: nothing poisons the queue;
- a batch that keeps failing for another reason is spooled to disk and the sink moves on;
- in scaled mode a batch handed to the broker is kept until the ledger holds it: after
  ``LLMPROXY_USAGE_CONFIRM_SECONDS`` its request ids are looked up and the missing ones sent
  again (a flushed Redis lost the message; a replay inserts nothing twice);
- at shutdown (``spool_undelivered``) what is still queued or unconfirmed goes to the spool
  (``billing.spool``), replayed at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import kombu.exceptions
from django.conf import settings
from django.db import close_old_connections, connections

from billing import services, spool, tasks, writer
from billing.records import UsageRecord
from llmproxy.core import metrics

log = logging.getLogger(__name__)

_NUDGE = object()
# Attempts at a batch that fails with an error that is not the database (or the broker, or
# the writer process) being away; and at a batch in the writer process before this thread
# takes it over.
_ATTEMPTS = 3
# The database, the broker or the writer process away: retried with backoff, without end.
_TRANSIENT = (*services.TRANSIENT_ERRORS, kombu.exceptions.OperationalError, writer.Unavailable)


class _Sent:
    """A batch handed to the broker, until the ledger is seen to hold it."""

    def __init__(self, batch: list[UsageRecord], wait: float) -> None:
        self.batch = batch
        self.wait = wait
        self.check_at = time.monotonic() + wait


class UsageSink:
    def __init__(self, batch_size: int | None = None, linger: float = 0.2) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._batch_size = batch_size  # None: LLMPROXY_USAGE_BATCH_SIZE, read when first needed
        self._linger = linger
        self._pending = 0
        self._oldest: float | None = None  # when the oldest undelivered record came in
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._sent: list[_Sent] = []  # scaled mode: handed over, not yet seen in the ledger
        self._in_hand: list[UsageRecord] = []  # the batch being delivered
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set with a control item: stop lingering
        self._writer = writer.WriterProcess()  # started by the first batch that needs it

    def submit(self, event: UsageRecord) -> None:
        """Non-blocking; safe from the event loop."""
        with self._idle:
            self._pending += 1
            if self._oldest is None:
                self._oldest = time.monotonic()
        metrics.USAGE_QUEUED.inc()
        self._queue.put(event)
        if self._thread is None:
            self._start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted event was handed over; True when it was."""
        self._control(_NUDGE)  # no lingering for more events: hand over what is queued
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def spool_undelivered(self, timeout: float = 10.0) -> int:
        """At shutdown, after ``flush``: write what is still queued, being retried, or (scaled
        mode) handed over but not yet in the ledger to the spool; returns how many events.

        The sink keeps working afterwards (tests stop servers in the middle of a session).
        """
        if self._thread is None:
            return 0
        self._stopping.set()
        done = threading.Event()
        spooled: list[int] = []
        self._control(lambda: (spooled.append(self._spool_all()), done.set()))
        if not done.wait(timeout):
            # The thread is stuck in a database call: spool from here. What it writes after
            # all is stored once (a replay skips known request ids).
            spooled.append(self._spool_all())
        self._stopping.clear()
        return spooled[0]

    def replay_spool(self) -> None:
        """At startup: write what an earlier process spooled, in the sink's thread (off the
        event loop; a database that is down leaves the files for the next start or
        ``manage.py replayusage``)."""

        def replay() -> None:
            try:
                close_old_connections()
                if spool.pending():
                    log.warning("usage spool: %d events recorded", spool.replay())
            except Exception:
                log.exception("usage spool not replayed; it is kept for the next start")
            finally:
                close_old_connections()

        if self._thread is None:
            self._start()
        self._control(replay)

    def start_writer(self) -> None:
        """At startup, in the embedded mode: have the writer process ready for the first
        batch (started in this sink's thread, off the event loop)."""
        if settings.LLMPROXY_USAGE_WRITER_PROCESS:
            if self._thread is None:
                self._start()
            self._control(self._writer.prepare)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="usage-sink", daemon=True)
                self._thread.start()

    def close_connections(self, timeout: float = 10.0) -> None:
        """Close this thread's database connections (at shutdown, or before a test DB drop)."""
        if self._thread is None:
            return
        done = threading.Event()

        def close() -> None:
            self._writer.close(timeout)
            connections.close_all()
            done.set()

        self._control(close)
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch, controls = self._next_batch()
            if batch:
                if self._oldest is not None:
                    metrics.USAGE_LAG_SECONDS.set(time.monotonic() - self._oldest)
                self._in_hand = batch
                self._deliver(batch)
                self._in_hand = []
                self._done(len(batch))
            if self._sent:
                self._confirm()
            for control in controls:
                control()

    def _done(self, count: int) -> None:
        metrics.USAGE_QUEUED.dec(count)
        with self._idle:
            self._pending -= count
            self._oldest = time.monotonic() if self._pending else None
            self._idle.notify_all()

    def _next_batch(self) -> tuple[list[UsageRecord], list[Callable[[], object]]]:
        """Events until the batch is full, the linger time is up, or a control item arrives
        (or nothing, when a sent batch is due for its check).

        The thread blocks on the queue only for the first event of a batch; for the rest it
        sleeps out the linger time and then takes what has come. Blocking on the queue for
        each event would wake this thread once per request, and every wake takes the GIL
        from the event loop (a futex wake in ``submit``, then a switch): per batch, not per
        event, is what the loop can afford.
        """
        batch: list[UsageRecord] = []
        size = self._batch_size or settings.LLMPROXY_USAGE_BATCH_SIZE
        controls: list[Callable[[], object]] = []
        try:
            item = self._queue.get(timeout=self._until_check())
        except queue.Empty:
            return batch, controls
        if self._take(item, batch, controls) and not self._drain(batch, controls, size):
            self._wake.wait(self._linger)
            self._wake.clear()  # (a control item queued by now is taken in the drain)
            self._drain(batch, controls, size)
        return batch, controls

    def _take(self, item: object, batch: list[UsageRecord], controls: list) -> bool:
        """Add an item to the batch or the controls; False when it ends the batch."""
        if isinstance(item, UsageRecord):
            batch.append(item)
            return True
        self._wake.clear()  # set for this item (``_control`` sets it first, then queues)
        if item is not _NUDGE:
            controls.append(item)
        return False

    def _drain(self, batch: list[UsageRecord], controls: list, size: int) -> bool:
        """Take what is queued without waiting; True when the batch is complete (full, or
        ended by a control item)."""
        while len(batch) < size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if not self._take(item, batch, controls):
                return True
        return True

    def _control(self, item: object) -> None:
        """Queue a control item (or the nudge) and cut a lingering batch short for it. The
        wake comes first: taking the item clears it, so none outlives its item."""
        self._wake.set()
        self._queue.put(item)

    def _until_check(self) -> float | None:
        if not self._sent:
            return None
        return max(0.0, min(sent.check_at for sent in self._sent) - time.monotonic())

    def _deliver(self, batch: list[UsageRecord]) -> None:
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                _tidy_connections()
                if settings.CELERY_TASK_ALWAYS_EAGER:
                    self._write(batch, attempt)
                else:
                    self._to_broker(batch, attempt)
                    wait = settings.LLMPROXY_USAGE_CONFIRM_SECONDS
                    self._sent.append(_Sent(batch, wait))
                return
            except Exception as exc:
                transient = isinstance(exc, _TRANSIENT)
                if self._stopping.is_set() or (not transient and attempt >= _ATTEMPTS):
                    # Never let one batch hold up the ones after it; nothing is lost either.
                    log.exception("usage batch of %d not delivered; spooling it", len(batch))
                    self._spool(batch)
                    return
                # Keep the batch and try again: losing a usage event loses money.
                log.exception("usage batch of %d not handed over; retrying", len(batch))
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
            finally:
                _tidy_connections()

    def _write(self, batch: list[UsageRecord], attempt: int) -> None:
        """Embedded mode: store a batch through the writer process, or in this thread (no
        process wanted, none to be had, or one that failed this batch ``_ATTEMPTS`` times:
        a batch that kills its writer must not hold up the ones after it). Either way not
        through Celery's eager wrapping, which holds the GIL for milliseconds."""
        if self._use_writer(attempt):
            try:
                written, dead = self._writer.store(batch)
            except writer.Disabled:
                pass
            else:
                metrics.USAGE_WRITTEN.inc(written)
                metrics.USAGE_DEAD_LETTERED.inc(dead)
                return
        services.record_usage_batch(batch)

    def _to_broker(self, batch: list[UsageRecord], attempt: int) -> None:
        """Scaled mode: the writer process publishes the batch (kombu's serialising and
        publishing is Python too), or this thread does (as in ``_write``)."""
        if self._use_writer(attempt):
            try:
                self._writer.send(batch)
                return
            except writer.Disabled:
                pass
        tasks.record_usage_batch.delay([record.to_wire() for record in batch])

    def _recorded(self, request_ids: list[str]) -> set[str]:
        if self._use_writer(1):
            try:
                return self._writer.recorded(request_ids)
            except writer.Disabled:
                pass
        return services.recorded_request_ids(request_ids)

    def _use_writer(self, attempt: int) -> bool:
        return (
            settings.LLMPROXY_USAGE_WRITER_PROCESS
            and attempt <= _ATTEMPTS
            and not self._writer.disabled
        )

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid, while it runs."""
        return self._writer.pid

    def _confirm(self) -> None:
        """Send again, from the sent batches due for their check, the events the ledger does
        not hold yet; forget the rest."""
        now = time.monotonic()
        due = [sent for sent in self._sent if sent.check_at <= now]
        if not due:
            return
        try:
            close_old_connections()
            ids = [record.request_id for sent in due for record in sent.batch]
            held = self._recorded(ids)
        except Exception:
            log.exception("usage delivery check failed; trying again")
            for sent in due:
                sent.check_at = now + min(sent.wait, 30.0)
            return
        finally:
            close_old_connections()
        for sent in due:
            self._sent.remove(sent)
            missing = [record for record in sent.batch if record.request_id not in held]
            if not missing:
                continue
            log.warning("%d usage events not in the ledger yet; sending again", len(missing))
            try:
                self._to_broker(missing, 1)
            except Exception:
                log.exception("usage batch of %d not handed over again", len(missing))
            # A slow worker is not a lost message: wait twice as long before the next check.
            again = _Sent(missing, min(sent.wait * 2, 3600.0))
            self._sent.append(again)

    def _spool_all(self) -> int:
        """Spool every event not known to be in the ledger (the queue, the batch in hand,
        the unconfirmed batches)."""
        queued: list[UsageRecord] = []
        controls = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, UsageRecord):
                queued.append(item)
            elif item is not _NUDGE:
                controls.append(item)
        if self._sent and threading.current_thread() is self._thread:
            for sent in self._sent:
                sent.check_at = 0.0
            self._confirm_before_spooling()
        unconfirmed = [record for sent in list(self._sent) for record in sent.batch]
        records = queued + list(self._in_hand) + unconfirmed
        self._spool(records)
        self._sent.clear()
        if queued:
            self._done(len(queued))
        for control in controls:
            self._queue.put(control)
        return len(records)

    def _confirm_before_spooling(self) -> None:
        """One look at the ledger, so what the worker already wrote is not spooled."""
        try:
            ids = [record.request_id for sent in self._sent for record in sent.batch]
            held = services.recorded_request_ids(ids)
        except Exception:
            log.exception("usage delivery check at shutdown failed; spooling every batch")
            return
        for sent in self._sent:
            sent.batch = [record for record in sent.batch if record.request_id not in held]

    def _spool(self, records: list[UsageRecord]) -> None:
        try:
            spool.write(record.to_wire() for record in records)
        except OSError:
            log.exception("%d usage events could not be spooled", len(records))


def _tidy_connections() -> None:
    """Before and after a delivery: close this thread's connections that failed and are no
    longer usable, keep the others. Unlike ``close_old_connections`` (which, with
    CONN_MAX_AGE 0, closes every one), a healthy connection serves the next batch: opening
    one (a new SQLite connection registers Django's functions; PostgreSQL's handshake) costs
    more than the batch's insert, with the GIL held. ``close_connections`` closes them all."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or not connection.errors_occurred:
            continue
        if connection.in_atomic_block or not connection.is_usable():
            connection.close()
        else:
            connection.errors_occurred = False


sink = UsageSink()
