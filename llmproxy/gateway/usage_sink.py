"""Hands usage events from the response path to Celery without blocking it.

The event loop only appends to a thread-safe queue. One daemon thread per process drains it
in batches and submits ``billing.tasks.record_usage_batch``: to the broker in scaled mode, or
runs it right there in embedded (eager) mode, where the ORM is fine because this is a plain
thread. A failed submission is retried with backoff; events stay queued meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connections

from billing import services, tasks
from billing.records import UsageRecord
from llmproxy.core import metrics

log = logging.getLogger(__name__)

_NUDGE = object()


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
        self._queue.put(_NUDGE)  # no lingering for more events: hand over what is queued
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

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
            connections.close_all()
            done.set()

        self._queue.put(close)
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch, controls = self._next_batch()
            if batch:
                if self._oldest is not None:
                    metrics.USAGE_LAG_SECONDS.set(time.monotonic() - self._oldest)
                self._deliver(batch)
                metrics.USAGE_QUEUED.dec(len(batch))
                with self._idle:
                    self._pending -= len(batch)
                    self._oldest = time.monotonic() if self._pending else None
                    self._idle.notify_all()
            for control in controls:
                control()

    def _next_batch(self) -> tuple[list[UsageRecord], list]:
        """Events until the batch is full, the linger time is up, or a control item arrives."""
        batch: list[UsageRecord] = []
        size = self._batch_size or settings.LLMPROXY_USAGE_BATCH_SIZE
        controls = []
        item = self._queue.get()
        deadline = time.monotonic() + self._linger
        while True:
            if not isinstance(item, UsageRecord):
                if item is not _NUDGE:
                    controls.append(item)
                break
            batch.append(item)
            if len(batch) >= size:
                break
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
        return batch, controls

    def _deliver(self, batch: list[UsageRecord]) -> None:
        delay = 0.5
        while True:
            try:
                close_old_connections()
                if settings.CELERY_TASK_ALWAYS_EAGER:
                    # Eager mode would run the task here anyway; skip Celery's wrapping,
                    # which holds the GIL for milliseconds the event loop wants.
                    services.record_usage_batch(batch)
                else:
                    tasks.record_usage_batch.delay([record.to_wire() for record in batch])
                return
            except Exception:
                # Keep the batch and try again: losing a usage event loses money.
                log.exception("usage batch of %d not handed over; retrying", len(batch))
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                close_old_connections()


sink = UsageSink()
