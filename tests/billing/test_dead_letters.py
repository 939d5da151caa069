"""Finding 3 of issue 10: one bad usage event cannot stop the ledger.

Events that are not storable as they come are clamped where the record is read; a row the
database still refuses is dead-lettered while the rest of its batch is stored, and the
batches after it are not held up; events still queued at shutdown are spooled and replayed.
Runs on SQLite (embedded) and on PostgreSQL (DATABASE_URL).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from billing import services, spool, tasks
from billing.models import UsageDeadLetter, UsageEvent
from billing.records import BIGINT_MAX, UsageRecord
from llmproxy.core import metrics
from llmproxy.gateway.usage_sink import UsageSink
from tests.billing.test_celery_worker import database_url

pytestmark = pytest.mark.django_db(transaction=True)


def now() -> str:
    return datetime.now(UTC).isoformat()


def good(request_id: str) -> UsageRecord:
    return UsageRecord.build(
        request_id=request_id, model="m", endpoint="/v1/messages", cost_usd="0.25",
        created_at=now(),
    )  # fmt: skip


def raw(request_id: str, **fields) -> UsageRecord:
    """A record made without ``build``: nothing clamped (as a buggy or foreign producer
    could make one)."""
    values = {"model": "m", "endpoint": "/v1/messages", "created_at": now(), **fields}
    return UsageRecord(request_id=request_id, **values)


def dead_lettered() -> float:
    return metrics.USAGE_DEAD_LETTERED._value.get()


def stored_ids() -> set[str]:
    return set(UsageEvent.objects.values_list("request_id", flat=True))


def test_a_row_the_database_refuses_is_dead_lettered_and_its_batch_stored():
    before = dead_lettered()
    poison = [
        raw("huge", input_tokens=2**64 - 1),  # SQLite: OverflowError; PostgreSQL: DataError
        raw("nul", model="claude\x00x"),  # PostgreSQL: DataError (SQLite takes it)
        raw("when", created_at="yesterday"),  # not a date anywhere
        raw("gone", api_key_id=987654),  # a key deleted meanwhile: the foreign key fails
    ]
    batch = [good(f"g{i}") for i in range(5)]
    batch[2:2] = poison
    stored = services.record_usage_batch(batch)
    letters = {letter.request_id: letter for letter in UsageDeadLetter.objects.all()}
    ids = stored_ids()
    assert {f"g{i}" for i in range(5)} <= ids
    assert {"huge", "when", "gone"} <= set(letters)
    for record in poison:  # each exactly once: stored or dead-lettered
        assert (record.request_id in ids) != (record.request_id in letters)
    assert stored == len(ids) and dead_lettered() - before == len(letters)
    assert json.loads(letters["huge"].data)["input_tokens"] == 2**64 - 1
    assert "yesterday" in letters["when"].error
    # The batch after it is not held up; a replay of the poisoned batch changes nothing.
    assert services.record_usage_batch([good("after")]) == 1
    assert services.record_usage_batch(batch) == 0
    assert UsageDeadLetter.objects.count() == len(letters)


def test_poison_on_the_wire_is_clamped_amid_good_events():
    """The Celery task's input (what a worker reads off the broker): a token count beyond
    bigint and a NUL in the model name are clamped and stored with the good events; a
    malformed event is dead-lettered."""
    wire = [good(f"w{i}").to_wire() for i in range(4)]
    wire.insert(1, {**good("huge").to_wire(), "input_tokens": 2**64 - 1})
    wire.insert(3, {**good("nul").to_wire(), "model": "claude\u0000-opus"})
    wire.insert(4, {**good("odd").to_wire(), "extra": 1})
    assert tasks.record_usage_batch(wire) == 6
    assert UsageEvent.objects.get(request_id="huge").input_tokens == BIGINT_MAX
    assert UsageEvent.objects.get(request_id="nul").model == "claude-opus"
    assert "input_tokens" in UsageEvent.objects.get(request_id="huge").error
    assert list(UsageDeadLetter.objects.values_list("request_id", flat=True)) == ["odd"]


def test_the_sink_is_not_stopped_by_a_poisoned_batch(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    sink = UsageSink(batch_size=3, linger=0.05)
    try:
        sink.submit(good("a"))
        sink.submit(raw("huge", input_tokens=2**64 - 1))
        sink.submit(good("b"))
        for i in range(20):  # the batches after it
            sink.submit(good(f"later{i}"))
        assert sink.flush(timeout=20)
        assert {"a", "b"} | {f"later{i}" for i in range(20)} <= stored_ids()
        assert UsageDeadLetter.objects.filter(request_id="huge").exists()
    finally:
        sink.close_connections()


class CountingSink(UsageSink):
    """The real sink, with the size of every batch it delivers written down."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batches: list[int] = []

    def _deliver(self, batch: list[UsageRecord]) -> None:
        self.batches.append(len(batch))
        super()._deliver(batch)


def test_the_sink_hands_over_per_batch_and_a_flush_cuts_its_linger_short(settings):
    """Events that come within the linger time go in one batch (the thread wakes per batch,
    not per event, so the event loop keeps the GIL); a flush does not wait out the linger."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    sink = CountingSink(batch_size=40, linger=0.5)
    try:
        for i in range(100):
            sink.submit(good(f"n{i}"))
        assert sink.flush(timeout=20)
        assert sum(sink.batches) == 100 and max(sink.batches) == 40
        assert {f"n{i}" for i in range(100)} <= stored_ids()
        sink.batches.clear()
        sink._linger = 3600.0  # a flush must not wait for it
        sink.submit(good("alone"))
        assert sink.flush(timeout=20)
        assert sink.batches == [1] and "alone" in stored_ids()
    finally:
        sink.close_connections()


def test_dead_letters_are_read_only_in_the_admin(admin_user, client):
    services.record_usage_batch([raw("when", created_at="yesterday")])
    letter = UsageDeadLetter.objects.get()
    client.force_login(admin_user)
    listing = client.get("/admin/billing/usagedeadletter/")
    assert listing.status_code == 200 and b"when" in listing.content
    page = client.get(f"/admin/billing/usagedeadletter/{letter.pk}/change/")
    assert page.status_code == 200 and b"yesterday" in page.content
    assert b'name="_save"' not in page.content
    assert client.get("/admin/billing/usagedeadletter/add/").status_code == 403
    assert client.post(f"/admin/billing/usagedeadletter/{letter.pk}/delete/").status_code == 403
    assert UsageDeadLetter.objects.count() == 1


def test_the_spool_replays_once_by_command(settings, tmp_path):
    settings.LLMPROXY_USAGE_SPOOL_DIR = tmp_path
    spool.write([good("s1").to_wire(), good("s2").to_wire()])
    spool.write([good("s2").to_wire(), {"garbage": True}])
    call_command("replayusage")
    assert stored_ids() == {"s1", "s2"} and spool.pending() == []
    assert UsageDeadLetter.objects.count() == 1  # the garbage line: kept, not lost
    spool.write([good("s1").to_wire()])
    call_command("replayusage")  # already recorded: nothing doubles
    assert UsageEvent.objects.count() == 2


def test_events_queued_at_shutdown_are_spooled_and_none_lost(settings, tmp_path):
    """The ledger stops answering (PostgreSQL: a lock on the usage table holds the writer's
    INSERT) while events are queued; shutdown spools them; the replay records each once, the
    one the stuck writer commits later included."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite: tests/e2e/test_usage_shutdown.py stops an embedded gateway")
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.LLMPROXY_USAGE_SPOOL_DIR = tmp_path
    sink = UsageSink(batch_size=5, linger=0.01)
    blocker = psycopg.connect(database_url())
    try:
        blocker.execute("LOCK TABLE billing_usageevent IN ACCESS EXCLUSIVE MODE")
        for i in range(23):
            sink.submit(good(f"q{i}"))
        assert not sink.flush(timeout=0.5)
        spooled = sink.spool_undelivered(timeout=1)
        assert spooled >= 23 - 5  # the queue, and the batch the writer is stuck on
    finally:
        blocker.rollback()
        blocker.close()
    assert sink.flush(timeout=20)  # the stuck batch went in once the lock was gone
    spool.replay()
    sink.close_connections()
    assert stored_ids() == {f"q{i}" for i in range(23)}
    assert UsageEvent.objects.count() == 23
