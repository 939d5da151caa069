"""OpenTelemetry traces: each proxied call is a span with its stages, exported over OTLP to a
real HTTP receiver on loopback; with no endpoint configured nothing is sent."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmproxy.core import tracing
from tests.fakes import MODEL
from tests.fakes import fake_provider as fu

pytestmark = pytest.mark.e2e


class OTLPReceiver:
    """POST /v1/traces: OTLP protobuf, decoded and kept."""

    def __init__(self) -> None:
        self.spans: list = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self._ready.set()
        self._loop.run_forever()

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")


@pytest.fixture(scope="module")
def receiver():
    return OTLPReceiver()


def attributes(span) -> dict:
    found = {}
    for pair in span.attributes:
        value = pair.value
        found[pair.key] = value.string_value or value.int_value or value.double_value
    return found


def test_a_call_is_a_span_with_its_stages(gateway, fake, make_key, receiver, settings):
    settings.LLMPROXY_OTLP_ENDPOINT = receiver.url
    tracing.tracer.cache_clear()
    fake.set_default(fu.text("ok", input_tokens=12, output_tokens=3))
    body = {"model": MODEL, "max_tokens": 7, "messages": [{"role": "user", "content": "x"}]}
    answer = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": make_key()})
    assert answer.status_code == 200
    time.sleep(0.3)
    tracing.flush()
    deadline = time.monotonic() + 10
    while not any(s.name == f"chat {MODEL}" for s in receiver.spans):
        assert time.monotonic() < deadline, [s.name for s in receiver.spans]
        time.sleep(0.1)
    (call,) = [s for s in receiver.spans if s.name == f"chat {MODEL}"]
    found = attributes(call)
    assert found["gen_ai.operation.name"] == "chat" and found["gen_ai.system"] == "anthropic"
    assert found["gen_ai.request.model"] == MODEL and found["gen_ai.request.max_tokens"] == 7
    assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (12, 3)
    assert found["llmproxy.cost_usd"] == pytest.approx((12 * 3 + 3 * 15) / 1e6)
    assert found["llmproxy.request_id"] == answer.headers["x-llmproxy-request-id"]
    stages = {s.name: s for s in receiver.spans if s.parent_span_id == call.span_id}
    assert set(stages) == {"authenticate", "admit", "upstream", "relay", "settle"}
    for stage in stages.values():
        assert call.start_time_unix_nano <= stage.start_time_unix_nano
        assert stage.start_time_unix_nano <= stage.end_time_unix_nano <= call.end_time_unix_nano
        assert stage.trace_id == call.trace_id


def test_nothing_is_traced_when_no_endpoint_is_set(gateway, fake, make_key, receiver, settings):
    settings.LLMPROXY_OTLP_ENDPOINT = None
    before = len(receiver.spans)
    fake.set_default(fu.text("ok"))
    body = {"model": MODEL, "max_tokens": 7, "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(gateway.url + "/v1/messages", json=body,
                      headers={"x-api-key": make_key()}).is_success  # fmt: skip
    assert not tracing.enabled()
    time.sleep(1)
    assert len(receiver.spans) == before
