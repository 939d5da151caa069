"""The usage pipeline with a real Celery worker process on real Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from billing.models import UsageDeadLetter, UsageEvent
from llmproxy.celery import app

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def database_url() -> str:
    db = connection.settings_dict  # the test database pytest-django created
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgresql://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def start_worker(tmp_path: Path) -> subprocess.Popen:
    environment = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": "test-secret-key-not-for-production",
        "LLMPROXY_DATA_DIR": str(tmp_path),
        "LLMPROXY_CELERY_VISIBILITY_TIMEOUT": "3",
    }
    log = (tmp_path / "worker.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "llmproxy", "worker", "-P", "solo",
         "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def events(batch: int, size: int) -> list[dict]:
    now = datetime.now(UTC).isoformat()
    return [
        {"request_id": f"b{batch}-e{i}", "model": "m", "endpoint": "/v1/messages",
         "input_tokens": 10, "cost_usd": "0.001", "created_at": now}
        for i in range(size)
    ]  # fmt: skip


def clear_queue(redis_client) -> None:
    """The default queue and kombu's unacknowledged tasks: a task an earlier test's killed
    worker held would otherwise come back (after the visibility timeout) into this test."""
    redis_client.delete("celery", "unacked", "unacked_index", "unacked_mutex")


def worker_log(tmp_path: Path) -> str:
    log = tmp_path / "worker.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no worker log)"


def wait_for(condition, seconds: float, what: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            count = UsageEvent.objects.count()
            pytest.fail(f"timed out waiting for {what} ({count} events)\n{worker_log(tmp_path)}")
        time.sleep(0.02)


def insert_waiting_on_lock(blocker) -> bool:
    """Is a worker's INSERT into the usage table waiting for the test's table lock?"""
    row = blocker.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE 'INSERT INTO \"billing_usageevent\"%%'"
    ).fetchone()
    return row[0] > 0


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")
def test_a_worker_killed_mid_batch_loses_and_doubles_nothing(postgres, redis_client, tmp_path):
    batches, size = 30, 400
    clear_queue(redis_client)  # only this test's tasks
    for batch in range(batches):
        # send_task always goes through the broker (the test settings run tasks eagerly)
        app.send_task("billing.tasks.record_usage_batch", args=[events(batch, size)])
    assert redis_client.llen("celery") == batches  # kept while no worker runs

    # A second connection that can stop the worker in the middle of a batch: while it holds
    # a SHARE lock on the usage table, the worker's INSERT waits inside its transaction.
    blocker = psycopg.connect(database_url())
    worker = start_worker(tmp_path)
    try:
        wait_for(lambda: UsageEvent.objects.count() >= 3 * size, 60, "three batches", tmp_path)
        blocker.execute("LOCK TABLE billing_usageevent IN SHARE MODE")
        with psycopg.connect(database_url(), autocommit=True) as watcher:
            wait_for(lambda: insert_waiting_on_lock(watcher), 30, "a blocked batch", tmp_path)
        os.kill(worker.pid, signal.SIGKILL)  # mid-batch: no chance to commit or acknowledge
        worker.wait(10)
        blocker.rollback()
        written_when_killed = UsageEvent.objects.count()
        assert 0 < written_when_killed < batches * size
        assert written_when_killed % size == 0  # the killed batch left nothing half-written
        worker = start_worker(tmp_path)
        wait_for(lambda: UsageEvent.objects.count() >= batches * size, 90, "every event", tmp_path)
        time.sleep(4)  # past the visibility timeout: a redelivered batch would land now
    finally:
        blocker.close()
        worker.kill()
        worker.wait(10)
    assert UsageEvent.objects.count() == batches * size
    assert UsageEvent.objects.values("request_id").distinct().count() == batches * size


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")
def test_poison_events_do_not_stop_a_worker(postgres, redis_client, tmp_path):
    """Issue 10, finding 3, on PostgreSQL with a real worker: a token count beyond bigint and
    a NUL in a model name (each failed a whole batch with DataError before), a malformed
    event and one with no usable date, amid good events; the batches after them too."""
    clear_queue(redis_client)
    poisoned = events(0, 6)
    poisoned[1]["input_tokens"] = 2**64 - 1
    poisoned[2]["model"] = "claude\u0000-opus"
    poisoned[3]["extra"] = "unknown field"
    poisoned[4]["created_at"] = "not a date"
    app.send_task("billing.tasks.record_usage_batch", args=[poisoned])
    for batch in range(1, 4):
        app.send_task("billing.tasks.record_usage_batch", args=[events(batch, 50)])
    worker = start_worker(tmp_path)
    try:
        wait_for(lambda: UsageEvent.objects.count() >= 4 + 150, 60, "every batch", tmp_path)
        time.sleep(1)
    finally:
        worker.kill()
        worker.wait(10)
    assert UsageEvent.objects.count() == 4 + 150
    assert UsageEvent.objects.get(request_id="b0-e1").input_tokens == 2**63 - 1
    assert UsageEvent.objects.get(request_id="b0-e2").model == "claude-opus"
    letters = dict(UsageDeadLetter.objects.values_list("request_id", "error"))
    assert set(letters) == {"b0-e3", "b0-e4"}, letters
    assert "unknown field" in letters["b0-e3"] and "not a date" in letters["b0-e4"]
