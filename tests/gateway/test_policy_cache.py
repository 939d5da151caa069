"""The hot path reads policy from memory: no query once warm; changes land within a second."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
from django.db.backends import utils
from django.utils import timezone

from accounts.models import ApiKey
from llmproxy.gateway import hotstore
from tests.fakes import MODEL
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e

BODY = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@contextlib.contextmanager
def queries_on_the_request_path():
    """Count SQL run by any thread except the usage sink's (which is off the request path)."""
    seen: list[str] = []
    real_execute = utils.CursorWrapper.execute

    def execute(self, sql, params=None):
        if threading.current_thread().name != "usage-sink":
            seen.append(sql)
        return real_execute(self, sql, params)

    utils.CursorWrapper.execute = execute
    try:
        yield seen
    finally:
        utils.CursorWrapper.execute = real_execute


def call(gateway, secret: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": secret}, json=BODY)


def test_a_warm_request_makes_no_database_query(gateway, fake, make_key, recorded):
    secret = make_key(rpm=1000)  # limits and a budget on the path too
    from decimal import Decimal

    key = ApiKey.objects.get()
    key.budget_usd = Decimal(100)
    key.save()
    with queries_on_the_request_path() as cold:
        assert call(gateway, secret).status_code == 200
    assert cold, "the first request should have loaded the policy from the database"
    recorded()  # let the usage write finish outside the measured window
    with queries_on_the_request_path() as warm:
        for _ in range(20):
            assert call(gateway, secret).status_code == 200
    assert warm == []
    assert len(recorded()) == 21


def test_a_revocation_from_another_process_lands_within_a_second(gateway, fake, make_key):
    secret = make_key()
    assert call(gateway, secret).status_code == 200
    # What another process (a web worker, a management command) does: write the row, bump the
    # shared generation. No signal reaches this process.
    ApiKey.objects.update(revoked_at=timezone.now())
    hotstore.bump_shared_generation()
    started = time.monotonic()
    while call(gateway, secret).status_code == 200:
        assert time.monotonic() - started < 1.0, "the revoked key still worked after 1 s"
        time.sleep(0.02)
    assert call(gateway, secret).status_code == 401


def test_a_revocation_in_this_process_lands_at_once(gateway, fake, make_key):
    from accounts import services

    secret = make_key()
    assert call(gateway, secret).status_code == 200
    services.revoke_keys(queryset=ApiKey.objects.all(), reason="leaked")
    assert call(gateway, secret).status_code == 401


def test_a_provider_change_reroutes_the_next_request(gateway, fake, make_key):
    from llmproxy.gateway.models import Provider

    secret = make_key()
    fake.enqueue(fu.text("one"))
    assert call(gateway, secret).status_code == 200
    Provider.objects.update(enabled=False)
    hotstore.bump_shared_generation()
    time.sleep(0.6)
    response = call(gateway, secret)
    assert response.status_code == 404
    assert "No anthropic provider" in response.json()["error"]["message"]
