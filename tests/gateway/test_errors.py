"""The gateway's error kinds: each is its own kind, rendered in both protocols."""

from __future__ import annotations

import orjson
import pytest

from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.protocols import anthropic, openai

# The error types Anthropic's API documents (and Claude Code knows).
ANTHROPIC_TYPES = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "billing_error",
    "timeout_error",
}  # fmt: skip


def test_no_kind_is_an_alias_of_another():
    # Enum makes members with equal values aliases: a worker-busy 503 would be reported
    # (and counted in the metrics) as the provider's.
    assert len(ErrorKind.__members__) == len(list(ErrorKind))
    assert ErrorKind.OVERLOADED is not ErrorKind.UPSTREAM_BUSY
    assert ErrorKind.DRAINING.name == "DRAINING"


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_has_a_shape_in_both_protocols(kind):
    error = ProxyError(kind, "why")
    body = orjson.loads(anthropic.PROTOCOL.error_body(error))
    assert body["type"] == "error" and body["error"]["message"] == "why"
    assert body["error"]["type"] in ANTHROPIC_TYPES
    assert orjson.loads(openai.PROTOCOL.error_body(error))["error"]["message"] == "why"
    assert anthropic.PROTOCOL.error_status(error) == kind.status
