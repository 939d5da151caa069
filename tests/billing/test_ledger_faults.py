"""Faults while traffic flows (issue 10, "Prove it"): every usage event recorded exactly once.

A real gateway process (``python -m llmproxy serve``, scaled mode) and a real Celery worker on
PostgreSQL and Redis, with clients calling through the gateway all along. Faults, one after
the other:

1. the Celery worker is SIGKILLed in the middle of a batch (a lock on the usage table holds its
   INSERT inside the transaction), then restarted;
2. Redis is flushed (FLUSHDB of the test's Redis database) while tasks wait in the queue;
3. PostgreSQL "restarts": every backend connection of the test database except the test's
   own is terminated with ``pg_terminate_backend``. The machine's PostgreSQL server is shared
   with other work, so the test does not restart the server itself; to each client a
   terminated backend looks the same as a restarted server (the connection is gone, the next
   one is fresh).
4. the gateway's usage writer process (billing/writer.py: it publishes the gateway's
   batches and looks up their delivery) is SIGKILLed.

Afterwards the ledger holds one event per request id the clients were answered with, and no
other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection

from billing.models import UsageEvent
from tests.billing.test_celery_worker import (
    ROOT,
    clear_queue,
    database_url,
    insert_waiting_on_lock,
    start_worker,
    wait_for,
    worker_log,
)
from tests.e2e.test_embedded import free_port
from tests.e2e.test_usage_writer import writer_of
from tests.fakes import fake_provider as fu

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def start_gateway(tmp_path: Path, port: int) -> subprocess.Popen:
    environment = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SECRET_KEY": "test-secret-key-not-for-production",
        "LLMPROXY_DATA_DIR": str(tmp_path),
        "LLMPROXY_USAGE_BATCH_SIZE": "10",
        "LLMPROXY_USAGE_CONFIRM_SECONDS": "2",
    }
    log = (tmp_path / "gateway.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "llmproxy", "serve", "--port", str(port), "--no-access-log"],
        cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return server
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("the gateway did not start\n" + gateway_log(tmp_path))
            time.sleep(0.1)


def gateway_log(tmp_path: Path) -> str:
    return (tmp_path / "gateway.log").read_text(errors="replace")[-3000:]


class Traffic:
    """Clients calling the gateway in threads until stopped; what each was answered."""

    def __init__(self, url: str, secret: str, clients: int = 3) -> None:
        self.url, self.secret = url, secret
        self.answered: list[str] = []  # request ids of the 200 answers
        self.other: list[tuple[int, str]] = []  # every other answer: (status, request id)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        body = {"model": "claude-test-1", "max_tokens": 50,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        with httpx.Client(base_url=self.url, headers={"x-api-key": self.secret}) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/messages", json=body, timeout=30)
                except httpx.HTTPError:
                    continue  # no answer: nothing the client was told
                request_id = response.headers.get("x-llmproxy-request-id", "")
                if response.status_code == 200:
                    self.answered.append(request_id)
                else:
                    self.other.append((response.status_code, request_id))
                time.sleep(0.01)

    def wait_for_more(self, count: int, seconds: float = 60) -> None:
        target = len(self.answered) + count
        deadline = time.monotonic() + seconds
        while len(self.answered) < target:
            assert time.monotonic() < deadline, f"traffic stalled; other answers: {self.other[-5:]}"
            time.sleep(0.05)


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")
def test_every_usage_event_is_recorded_once_through_faults(
    postgres, redis_client, fake, make_key, tmp_path
):
    fake.set_default(fu.text("hello", input_tokens=120, output_tokens=12))
    secret = make_key()
    clear_queue(redis_client)
    port = free_port()
    worker = start_worker(tmp_path)
    gateway = start_gateway(tmp_path, port)
    try:
        with Traffic(f"http://127.0.0.1:{port}", secret) as traffic:
            traffic.wait_for_more(20)

            # 1. SIGKILL the worker in the middle of a batch, then start it again.
            with psycopg.connect(database_url()) as blocker:
                blocker.execute("LOCK TABLE billing_usageevent IN SHARE MODE")
                with psycopg.connect(database_url(), autocommit=True) as watcher:
                    wait_for(lambda: insert_waiting_on_lock(watcher), 30, "a blocked batch",
                             tmp_path)  # fmt: skip
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(10)
                blocker.rollback()
            traffic.wait_for_more(20)
            worker = start_worker(tmp_path)
            traffic.wait_for_more(20)

            # 2. Flush Redis while tasks wait in its queue (the worker is held by a lock).
            with psycopg.connect(database_url()) as blocker:
                blocker.execute("LOCK TABLE billing_usageevent IN SHARE MODE")
                deadline = time.monotonic() + 30
                while redis_client.llen("celery") < 2:
                    assert time.monotonic() < deadline, "no task queued\n" + worker_log(tmp_path)
                    time.sleep(0.05)
                redis_client.flushdb()
                blocker.rollback()
            traffic.wait_for_more(20)

            # 3. PostgreSQL "restarts": every other connection of this database is cut.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                assert cursor.fetchone()[0] >= 2  # the gateway's and the worker's at least
            traffic.wait_for_more(20)

            # 4. The gateway's usage writer process (which publishes its batches) dies.
            os.kill(writer_of(gateway.pid), signal.SIGKILL)
            traffic.wait_for_more(20)
        answered = set(traffic.answered)
        assert len(answered) == len(traffic.answered)  # request ids are unique
        # The gateway checks its batches after 2 s and doubles the wait each time.
        wait_for(
            lambda: set(UsageEvent.objects.values_list("request_id", flat=True)) >= answered,
            120, "every answered call's event", tmp_path,
        )  # fmt: skip
        time.sleep(5)  # past the visibility timeout (3 s): a redelivery would land now
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        worker.kill()
        worker.wait(10)
    recorded = list(UsageEvent.objects.values_list("request_id", flat=True))
    sent = answered | {request_id for _, request_id in traffic.other}
    assert len(recorded) == len(set(recorded))
    assert answered <= set(recorded), gateway_log(tmp_path)
    assert set(recorded) <= sent  # nothing the clients were not answered for
