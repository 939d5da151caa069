"""GET /metrics after a known mix of traffic: the counters and histograms add up to it, in
one process and across two uvicorn workers sharing a metrics directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Person, Team
from tests.fakes import MODEL
from tests.fakes import fake_provider as fu

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
BODY = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def total(found: dict, metric: str, /, **labels) -> float:
    return sum(
        value
        for (name, pairs), value in found.items()
        if name == metric and all(dict(pairs).get(k) == v for k, v in labels.items())
    )


def test_metrics_count_a_known_mix_of_traffic(gateway, fake, make_key, django_user_model):
    team = Team.objects.create(name="platform", budget_usd=Decimal(10))
    person = Person.objects.create(
        user=django_user_model.objects.create_user("dana"), budget_usd=Decimal(4),
        default_team=team,
    )  # fmt: skip
    secret = make_key(owner=person.user)
    before = samples(httpx.get(gateway.url + "/metrics").text)
    fake.set_default(fu.text("ok", input_tokens=100, output_tokens=10))
    headers = {"x-api-key": secret, "user-agent": "claude-cli/2.1.332 (external, cli)"}
    for _ in range(3):
        assert httpx.post(gateway.url + "/v1/messages", json=BODY, headers=headers).is_success
    stream = {**BODY, "stream": True}
    assert httpx.post(gateway.url + "/v1/messages", json=stream, headers=headers).is_success
    bad_key = httpx.post(gateway.url + "/v1/messages", json=BODY, headers={"x-api-key": "llmp-x"})
    assert bad_key.status_code == 401
    denied = httpx.post(
        gateway.url + "/v1/messages", json={**BODY, "model": "claude-opus-4-8"},
        headers={"x-api-key": make_key(allowed_models=["claude-test-*"])},
    )  # fmt: skip
    assert denied.status_code == 403
    time.sleep(0.3)  # the records settle before the client's last byte; give the sink a beat
    after = samples(httpx.get(gateway.url + "/metrics").text)

    def delta(metric: str, /, **labels) -> float:
        return total(after, metric, **labels) - total(before, metric, **labels)

    assert delta("llmproxy_requests_total", client="claude-code", status="200",
                 provider="fake-anthropic", model="claude-test-*") == 4  # fmt: skip
    assert delta("llmproxy_refusals_total", reason="auth") == 1
    assert delta("llmproxy_refusals_total", reason="permission") == 1
    spend = (100 * 3 + 10 * 15) / 10**6 * 4
    assert delta("llmproxy_spend_usd_total", team="platform") == pytest.approx(spend)
    assert delta("llmproxy_tokens_total", team="platform", type="input") == 400
    assert delta("llmproxy_gateway_seconds_count") == 4
    assert delta("llmproxy_time_to_first_byte_seconds_count", provider="fake-anthropic") == 4
    assert delta("llmproxy_upstream_seconds_count", provider="fake-anthropic") == 4
    assert total(after, "llmproxy_open_streams") == 0
    assert total(after, "llmproxy_budget_utilization_ratio", scope="team", name="platform") >= 0
    assert ("llmproxy_budget_utilization_ratio", (("name", "dana"), ("scope", "person"))) in after
    # No per-key or per-session series.
    assert not any("key" in dict(labels) or "session" in dict(labels) for _, labels in after)


def test_metrics_are_refused_outside_the_allow_list_and_without_the_token(gateway, settings):
    assert httpx.get(gateway.url + "/metrics").status_code == 200  # loopback, no token set
    settings.LLMPROXY_METRICS_ALLOW_FROM = ["10.0.0.0/8"]
    assert httpx.get(gateway.url + "/metrics").status_code == 403
    settings.LLMPROXY_METRICS_ALLOW_FROM = ["127.0.0.0/8"]
    settings.LLMPROXY_METRICS_TOKEN = "scrape-me"
    assert httpx.get(gateway.url + "/metrics").status_code == 403
    scraped = httpx.get(gateway.url + "/metrics", headers={"authorization": "Bearer scrape-me"})
    assert scraped.status_code == 200 and "llmproxy_requests" in scraped.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_workers_report_one_total(fake_server, tmp_path):
    """Two uvicorn workers write to one metrics directory: any worker's /metrics reports
    the calls both served."""
    fake = fake_server.fake
    fake.clear()
    fake.set_default(fu.text("ok", input_tokens=10, output_tokens=1))
    env = {
        "PATH": os.environ["PATH"], "DJANGO_DEBUG": "true", "LLMPROXY_DATA_DIR": str(tmp_path),
        "LLMPROXY_METRICS_DIR": str(tmp_path / "metrics"), "LLMPROXY_ENV_FILE": "",
        "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS": "true",  # the fake provider is on loopback
    }  # fmt: skip

    def manage(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("migrate", "-v0")
    manage("addprovider", "fake", "--kind", "anthropic", "--base-url", fake.url,
           "--api-key", "sk-two-workers")  # fmt: skip
    secret = manage("createkey", "two workers").splitlines()[-1]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "llmproxy.asgi:application", "--port", str(port),
         "--workers", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        body = {**BODY, "model": "claude-haiku-4-5"}
        for _ in range(20):  # a new connection each: both workers get some
            with httpx.Client() as http:
                assert http.post(url + "/v1/messages", json=body,
                                 headers={"x-api-key": secret}).is_success  # fmt: skip
        totals = set()
        for _ in range(6):  # scraped through whichever worker takes the connection
            with httpx.Client() as http:
                found = samples(http.get(url + "/metrics").text)
            totals.add(total(found, "llmproxy_requests_total", status="200"))
        assert totals == {20.0}
        counters = [p.name for p in (tmp_path / "metrics").glob("counter_*.db")]
        assert len(counters) >= 2  # both worker processes write their own samples
    finally:
        server.terminate()
        server.wait(10)
