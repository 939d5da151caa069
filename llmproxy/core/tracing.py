"""OpenTelemetry traces of proxied calls, exported over OTLP/HTTP when configured.

Off by default (no LLMPROXY_OTLP_ENDPOINT): then ``enabled`` is False and the gateway
records nothing for traces, not even timestamps. On, each call becomes a span named after
the GenAI semantic conventions ("chat claude-sonnet-4-5") with children for its stages:
authenticate, admit, upstream, relay, settle. The spans are written once the call has
settled, from the times the gateway noted on the way, so no span has to cross the async
generators that stream the answer.
"""

from __future__ import annotations

import logging
from functools import cache

from django.conf import settings

log = logging.getLogger(__name__)


def enabled() -> bool:
    return bool(settings.LLMPROXY_OTLP_ENDPOINT)


@cache
def tracer():
    """The process's tracer, set up on first use (a worker process, after fork)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": settings.LLMPROXY_OTLP_SERVICE_NAME})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(
        endpoint=settings.LLMPROXY_OTLP_ENDPOINT.rstrip("/") + "/v1/traces",
        headers=dict(settings.LLMPROXY_OTLP_HEADERS),
        timeout=5,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider, provider.get_tracer("llmproxy")


def flush(timeout_ms: int = 5000) -> None:
    if enabled() and tracer.cache_info().currsize:
        tracer()[0].force_flush(timeout_ms)


def record_call(name: str, start_ns: int, end_ns: int, attributes: dict, stages: list) -> None:
    """One call's span and its stages: (name, start ns, end ns) each."""
    try:
        from opentelemetry import trace

        _, spans = tracer()
        root = spans.start_span(name, start_time=start_ns, kind=trace.SpanKind.CLIENT)
        for key, value in attributes.items():
            if value is not None:
                root.set_attribute(key, value)
        context = trace.set_span_in_context(root)
        for stage, begins, ends in stages:
            if begins is not None and ends is not None:
                spans.start_span(stage, context=context, start_time=begins).end(end_time=ends)
        root.end(end_time=end_ns)
    except Exception:  # a trace never costs a call its settlement
        log.exception("trace of %s not recorded", name)
