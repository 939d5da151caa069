"""What every provider kind provides (see the package docstring)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import httpx

from llmproxy.gateway import upstream
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.policy import ProviderInfo

Headers = list[tuple[bytes, bytes]]


@dataclass
class ClientRequest:
    """The request as the gateway would send it to the protocol's own API: the client's
    headers by allow-list (never its credential), the body as rewritten, the routed model."""

    method: str
    path: str  # the protocol's path: /v1/messages, /v1/responses, ...
    query: str
    headers: Headers
    body: bytes
    model: str  # the provider's name for the model
    stream: bool


class CredentialUnreachable(ProxyError):
    """The kind could not get the provider's credential because what issues it (an OAuth
    token endpoint) could not be reached: another provider may serve, as after a
    connection error."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.UPSTREAM_UNAVAILABLE, message)


@dataclass
class UpstreamRequest:
    method: str
    url: str
    headers: Headers
    body: bytes


class Kind:
    name: str
    protocol: str  # "anthropic" or "openai": what clients speak to reach this kind
    # The protocol paths this kind serves (None: every path of its protocol).
    paths: frozenset[str] | None = None
    # Its error bodies are already in the client protocol's shape (the provider's own API).
    native_errors = False
    # A provider of this kind cannot work without a credential in its record.
    credential_required = True

    def serves(self, path: str) -> bool:
        return self.paths is None or path in self.paths

    def check_options(self, options: dict) -> dict:
        """The provider's ``options`` as this kind needs them; ValueError names what is wrong."""
        if options:
            raise ValueError(f"a {self.name} provider takes no options")
        return options

    def check_credential(self, credential: str) -> None:
        """ValueError when ``credential`` cannot be what this kind needs (never says it)."""

    async def prepare(self, provider: ProviderInfo, request: ClientRequest) -> UpstreamRequest:
        """The provider's request. Raises ProxyError for what the client gets instead
        (CredentialUnreachable when another provider may serve)."""
        raise NotImplementedError

    def streaming(self, response: httpx.Response) -> bool:
        return upstream.header(response, b"content-type").startswith("text/event-stream")

    def answer(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The answer's bytes in the client's protocol (SSE or JSON)."""
        return response.aiter_raw()

    def answer_headers(self, response: httpx.Response) -> Iterable[tuple[bytes, bytes]]:
        """The answer's headers in the client's protocol's names (before the allow-list)."""
        return response.headers.raw

    def error_message(self, body: bytes) -> str:
        return upstream.error_message(body)

    def models_request(self, provider: ProviderInfo) -> UpstreamRequest | None:
        """How to list the provider's models, if it can."""
        return None

    def websocket(self, provider: ProviderInfo, path: str) -> tuple[str, Headers] | None:
        """The provider's own websocket for ``path`` and its credential headers, if any."""
        return None
