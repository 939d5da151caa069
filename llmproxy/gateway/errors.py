"""Errors the gateway raises itself; each protocol renders them in its own wire shape."""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    # value: (HTTP status, may the client retry?[, a tag]): kinds that share a status and
    # a retry flag carry a tag, or Enum would make them aliases of one another.
    INVALID_REQUEST = (400, True)
    AUTHENTICATION = (401, False)
    PERMISSION = (403, False)
    NOT_FOUND = (404, False)
    METHOD_NOT_ALLOWED = (405, False)
    REQUEST_TIMEOUT = (408, True)
    REQUEST_TOO_LARGE = (413, False)
    HEADERS_TOO_LARGE = (431, False)
    BILLING = (402, False)
    RATE_LIMIT = (429, True)
    UPSTREAM_CREDENTIAL = (502, False)
    UPSTREAM_UNAVAILABLE = (502, True)
    UPSTREAM_TIMEOUT = (504, True)
    UPSTREAM_BUSY = (503, True)  # the provider is unavailable for now
    UPSTREAM_OVERLOADED = (529, True)  # Anthropic's overloaded (OpenAI clients get 503)
    OVERLOADED = (503, True, "gateway")  # this worker is busy; another try may land elsewhere
    DRAINING = (503, True, "draining")  # this worker is shutting down; retry elsewhere
    INTERNAL = (500, True)

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def retryable(self) -> bool:
        return self.value[1]


class ProxyError(Exception):
    """A refusal or failure the client must see in its own protocol's error shape."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        self.status: int | None = None  # another status than the kind's, for one client

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(name.encode(), value.encode()) for name, value in self.headers.items()]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        if not self.kind.retryable:
            # Claude Code retries a 401 ten times over three minutes unless told not to.
            headers.append((b"x-should-retry", b"false"))
        return headers
