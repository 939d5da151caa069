"""Prometheus metrics of every llmproxy process (gateway workers, Celery), in one place.

Scraped at GET /metrics (llmproxy/console/metrics.py). With several processes on a host,
LLMPROXY_METRICS_DIR names a directory they all write their samples to (prometheus_client's
multiprocess mode), so any worker's /metrics reports the whole host. Labels are bounded:
models by the price pattern that priced them, clients by a known set, never a key or a
session (docs/operations.md, "Metrics").
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds: the gateway's own share is sub-millisecond to milliseconds; upstream calls and
# first bytes run to minutes.
FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "llmproxy_requests",
    "Calls proxied to a provider, by how they ended.",
    ["endpoint", "protocol", "client", "provider", "model", "status"],
)
REFUSALS = Counter(
    "llmproxy_refusals", "Calls the gateway refused itself, by reason.", ["reason", "protocol"]
)
GATEWAY_SECONDS = Histogram(
    "llmproxy_gateway_seconds",
    "Time the gateway added before a call went upstream (reading, authorizing, admitting).",
    ["protocol"],
    buckets=FAST,
)
TTFB_SECONDS = Histogram(
    "llmproxy_time_to_first_byte_seconds",
    "From the request's arrival to the first byte of the answer.",
    ["protocol", "provider"],
    buckets=SLOW,
)
UPSTREAM_SECONDS = Histogram(
    "llmproxy_upstream_seconds",
    "From the upstream call going out to its answer's last byte.",
    ["provider"],
    buckets=SLOW,
)
OPEN_STREAMS = Gauge(
    "llmproxy_open_streams", "Streamed answers being relayed now.", multiprocess_mode="livesum"
)
OPEN_WEBSOCKETS = Gauge(
    "llmproxy_open_websockets", "Client websockets open now.", multiprocess_mode="livesum"
)
ADMITTING = Gauge(
    "llmproxy_admissions_in_flight",
    "Calls waiting in admission (limits, budget reservation).",
    multiprocess_mode="livesum",
)
USAGE_QUEUED = Gauge(
    "llmproxy_usage_queued",
    "Usage records handed over and not yet delivered to the ledger writer.",
    multiprocess_mode="livesum",
)
USAGE_LAG_SECONDS = Gauge(
    "llmproxy_usage_lag_seconds",
    "How long the oldest queued usage record has waited.",
    multiprocess_mode="max",
)
USAGE_WRITTEN = Counter("llmproxy_usage_events_written", "Usage events stored in the ledger.")
USAGE_DEAD_LETTERED = Counter(
    "llmproxy_usage_events_dead_lettered", "Usage events the ledger could not store."
)
SPEND = Counter("llmproxy_spend_usd", "Spend recorded, in USD.", ["team", "model"])
TOKENS = Counter("llmproxy_tokens", "Tokens recorded.", ["team", "model", "type"])

KNOWN_CLIENTS = frozenset(
    {"claude-code", "codex", "anthropic-python", "anthropic-js", "openai-python", "openai-js"}
)
REFUSAL_REASONS = {
    "AUTHENTICATION": "auth",
    "PERMISSION": "permission",
    "RATE_LIMIT": "rate",
    "BILLING": "budget",
    "REQUEST_TOO_LARGE": "size",
    "INVALID_REQUEST": "invalid",
    "NOT_FOUND": "not_found",
    "METHOD_NOT_ALLOWED": "method",
}


_children: dict[tuple, object] = {}


def child(metric, *values: str):
    """``metric.labels(*values)``, looked up once: ``labels`` validates, converts and takes a
    lock on every call (several µs, a few times per request), and the label sets are bounded
    (see the module's docstring)."""
    key = (metric, values)
    found = _children.get(key)
    if found is None:
        found = metric.labels(*values)
        if len(_children) < 10_000:
            _children[key] = found
    return found


def client_label(client: str) -> str:
    return client if client in KNOWN_CLIENTS else "other"


def refused(kind_name: str, protocol: str) -> None:
    child(REFUSALS, REFUSAL_REASONS.get(kind_name, "other"), protocol).inc()
