"""Azure OpenAI / Microsoft Foundry for the OpenAI protocol (Responses and Chat).

Clients speak OpenAI's API; the model a route names upstream is the Azure **deployment**.
Two URL shapes, by the provider's ``api_version`` option:

- the v1 API (no ``api_version``, or ``"v1"``): ``{base}/openai/v1/responses``,
  ``/openai/v1/responses/compact``, ``/openai/v1/chat/completions``, the deployment as the
  body's ``model``;
- a dated API version: ``{base}/openai/responses?api-version=V`` (and ``/compact``), and
  ``{base}/openai/deployments/{deployment}/chat/completions?api-version=V``.

The credential is the resource's key, sent as ``api-key``; or, with ``"auth": "entra"``,
an Entra ID application's client credentials (JSON: tenant_id, client_id, client_secret)
exchanged at ``{authority}/{tenant}/oauth2/v2.0/token`` for a bearer token for
``https://cognitiveservices.azure.com/.default``, cached and refreshed before it expires.
Azure's errors are OpenAI-shaped, so they pass as the provider wrote them (by the status
table). Azure's ``apim-request-id`` becomes ``x-request-id`` when the answer has none.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, urlencode

import httpx
import orjson

from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.kinds.base import ClientRequest, Headers, Kind, UpstreamRequest
from llmproxy.gateway.kinds.tokens import Token, TokenCache, request_token
from llmproxy.gateway.policy import ProviderInfo

AUTHORITY = "https://login.microsoftonline.com"
SCOPE = "https://cognitiveservices.azure.com/.default"


def entra_application(text: str) -> dict:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(f), str) and data[f]
        for f in ("tenant_id", "client_id", "client_secret")
    ):
        raise ValueError("an Entra credential is JSON with tenant_id, client_id and client_secret")
    return data


class AzureKind(Kind):
    name = "azure"
    protocol = "openai"
    native_errors = True

    def __init__(self) -> None:
        self.tokens = TokenCache()

    def check_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - {"api_version", "auth", "authority"})
        if unknown:
            raise ValueError(f"an azure provider takes no option {unknown[0]!r}")
        version = options.get("api_version")
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ValueError('api_version is the API version string, e.g. "2025-04-01-preview"')
        if options.get("auth", "api-key") not in ("api-key", "entra"):
            raise ValueError('auth is "api-key" (the default) or "entra"')
        authority = options.get("authority", AUTHORITY)
        if not isinstance(authority, str) or not authority.startswith(("https://", "http://")):
            raise ValueError("authority is the Entra login URL (https://login.microsoftonline.com)")
        return options

    def check_credential(self, credential: str) -> None:
        if credential.lstrip().startswith("{"):
            entra_application(credential)

    def _entra(self, provider: ProviderInfo) -> bool:
        return provider.option("auth", "api-key") == "entra"

    def _url(self, provider: ProviderInfo, request: ClientRequest) -> str:
        version = provider.option("api_version")
        base = provider.base_url + "/openai"
        if not version or version == "v1":
            return base + request.path  # /openai/v1/responses, ...
        query = "?" + urlencode({"api-version": version})
        if request.path == "/v1/chat/completions":
            return f"{base}/deployments/{quote(request.model, safe='')}/chat/completions{query}"
        return base + request.path.removeprefix("/v1") + query

    async def credential(self, provider: ProviderInfo) -> Headers:
        if not self._entra(provider):
            return [(b"api-key", provider.credential.encode())]
        try:
            app = entra_application(provider.credential)
        except ValueError as exc:
            raise ProxyError(
                ErrorKind.UPSTREAM_CREDENTIAL,
                f"Provider {provider.name!r}: {exc}. An admin must fix its credential.",
            ) from None
        authority = str(provider.option("authority", AUTHORITY)).rstrip("/")
        url = f"{authority}/{quote(app['tenant_id'], safe='')}/oauth2/v2.0/token"

        async def fetch() -> Token:
            form = {"grant_type": "client_credentials", "client_id": app["client_id"],
                    "client_secret": app["client_secret"], "scope": SCOPE}  # fmt: skip
            return await request_token(provider, url, form)

        token = await self.tokens.get(provider.credential, fetch)
        return [(b"authorization", b"Bearer " + token.encode())]

    async def prepare(self, provider: ProviderInfo, request: ClientRequest) -> UpstreamRequest:
        headers = [*request.headers, *await self.credential(provider)]
        return UpstreamRequest(request.method, self._url(provider, request), headers, request.body)

    def answer_headers(self, response: httpx.Response) -> Iterable[tuple[bytes, bytes]]:
        raw = response.headers.raw
        if "x-request-id" in response.headers or "apim-request-id" not in response.headers:
            return raw
        return [*raw, (b"x-request-id", response.headers["apim-request-id"].encode())]

    def websocket(self, provider: ProviderInfo, path: str) -> tuple[str, Headers] | None:
        """The deployment's Responses websocket (v1 API, key auth), where the provider is
        marked as serving one; otherwise Codex's websocket is bridged to HTTP."""
        version = provider.option("api_version")
        if not provider.websockets or self._entra(provider) or (version and version != "v1"):
            return None
        url = provider.base_url.replace("http", "ws", 1) + "/openai" + path
        return url, [(b"api-key", provider.credential.encode())]
