"""The embedded mode's usage writer process (billing/writer.py), end to end.

A real gateway process on SQLite stores its usage through its writer child; the child is
killed in the middle of the traffic, and every call the client was answered for is still in
the ledger exactly once, written by the next child; /metrics counts what the children wrote;
the child ends with the gateway. In the test process itself a writer child would not see the
test database: it is refused and the sink's thread writes instead.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing import writer
from billing.models import UsageEvent
from billing.records import UsageRecord
from llmproxy.gateway.usage_sink import UsageSink
from tests.e2e.test_usage_shutdown import call, embedded_gateway, recorded, serve

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (any of its threads: the writer is started from the
    usage thread, so /proc/<pid>/task/<pid>/children would not list it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def writer_of(pid: int, timeout: float = 30.0, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + timeout
    while True:
        for child in children(pid):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"billing.writer" in command and child != not_pid:
                return child
        assert time.monotonic() < deadline, f"no usage writer process under {pid}"
        time.sleep(0.05)


def written_metric(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "llmproxy_usage_events_written":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise AssertionError("llmproxy_usage_events_written not in /metrics")


def wait_recorded(database: Path, answered: list[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while sorted(recorded(database)) != sorted(answered):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def test_the_writer_process_stores_usage_and_a_killed_one_loses_nothing(fake_server, tmp_path):
    env, port, url, secret = embedded_gateway(fake_server.fake, tmp_path)
    database = tmp_path / "llmproxy.sqlite3"
    log = tmp_path / "gateway.log"
    server = serve(env, port, log)
    try:
        first = writer_of(server.pid)  # started with the gateway, before any call
        answered = [call(url, secret) for _ in range(5)]
        wait_recorded(database, answered, log)
        assert written_metric(url) == 5  # counted by the gateway, for its child

        os.kill(first, signal.SIGKILL)
        answered += [call(url, secret) for _ in range(7)]
        wait_recorded(database, answered, log)
        second = writer_of(server.pid, not_pid=first)  # the batch went to a new child
        assert written_metric(url) == 12

        server.send_signal(signal.SIGTERM)
        server.wait(60)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{second}").exists() and "Z" not in _state(second):
            assert time.monotonic() < deadline, "the writer outlived its gateway"
            time.sleep(0.05)
    finally:
        if server.poll() is None:
            server.kill()
    ids = recorded(database)
    assert sorted(ids) == sorted(answered)  # each once: no call lost, none stored twice
    assert list((tmp_path / "usage-spool").glob("*.jsonl")) == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.django_db(transaction=True)
def test_a_writer_on_another_database_is_refused_and_the_thread_writes(settings):
    settings.LLMPROXY_USAGE_WRITER_PROCESS = True
    sink = UsageSink(batch_size=10, linger=0.01)
    record = UsageRecord.build(
        request_id="writer-elsewhere", model="m", endpoint="/v1/messages",
        created_at="2026-12-03T12:00:00+00:00",
    )  # fmt: skip
    sink.submit(record)
    assert sink.flush(90)
    # The child read the settings' database, not this test's own: given up for good.
    assert sink._writer.disabled
    assert sink.writer_pid is None
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["writer-elsewhere"]
    with pytest.raises(writer.Disabled):
        sink._writer.store([record])
    sink.close_connections()
