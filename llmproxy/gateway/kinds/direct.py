"""The providers' own APIs: Anthropic's and OpenAI's (and anything that speaks them)."""

from __future__ import annotations

from llmproxy.gateway.kinds.base import ClientRequest, Headers, Kind, UpstreamRequest
from llmproxy.gateway.policy import ProviderInfo


class DirectKind(Kind):
    native_errors = True

    def credential(self, provider: ProviderInfo) -> Headers:
        raise NotImplementedError

    async def prepare(self, provider: ProviderInfo, request: ClientRequest) -> UpstreamRequest:
        url = provider.base_url + request.path
        if request.query:
            url += "?" + request.query
        return UpstreamRequest(
            request.method, url, [*request.headers, *self.credential(provider)], request.body
        )

    def models_request(self, provider: ProviderInfo) -> UpstreamRequest | None:
        headers = [*self.default_headers, *self.credential(provider)]
        return UpstreamRequest("GET", provider.base_url + "/v1/models?limit=1000", headers, b"")

    default_headers: Headers = []


class AnthropicKind(DirectKind):
    name = "anthropic"
    protocol = "anthropic"
    default_headers = [(b"anthropic-version", b"2023-06-01")]

    def credential(self, provider: ProviderInfo) -> Headers:
        return [(b"x-api-key", provider.credential.encode())]


class OpenAIKind(DirectKind):
    name = "openai"
    protocol = "openai"

    def credential(self, provider: ProviderInfo) -> Headers:
        return [(b"authorization", b"Bearer " + provider.credential.encode())]

    def websocket(self, provider: ProviderInfo, path: str) -> tuple[str, Headers] | None:
        if not provider.websockets:
            return None
        return provider.base_url.replace("http", "ws", 1) + path, self.credential(provider)
