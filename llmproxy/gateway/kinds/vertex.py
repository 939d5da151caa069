"""Google Vertex AI for Claude: clients speak Anthropic Messages, the gateway calls the
Anthropic publisher's rawPredict / streamRawPredict.

The request: the Messages body without ``model`` (the URL names it), with
``anthropic_version: vertex-2023-10-16``, POSTed to
``{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict``
(``:streamRawPredict`` when the client asked for a stream), with a bearer access token the
gateway gets for the provider's service account: a JWT assertion signed with the account's
private key (google-auth's signer) exchanged at the account's ``token_uri``, cached and
refreshed before it expires (kinds/tokens.py). ``count_tokens`` goes to the publisher's
``count-tokens:rawPredict``. The answers are Anthropic's own (JSON or SSE).
"""

from __future__ import annotations

import time
from urllib.parse import quote

import orjson
from google.auth import crypt, jwt

from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.kinds.base import ClientRequest, Headers, Kind, UpstreamRequest
from llmproxy.gateway.kinds.tokens import Token, TokenCache, request_token
from llmproxy.gateway.policy import ProviderInfo

ANTHROPIC_VERSION = "vertex-2023-10-16"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# Client headers that still mean something to Vertex (the rest are the direct API's).
PASSED = frozenset({b"anthropic-beta", b"user-agent"})


def service_account(text: str) -> dict:
    """The service account's JSON key, checked for what the gateway uses."""
    try:
        info = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("the Vertex credential is not a service account's JSON key") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError('the Vertex credential is not a service account key ("type")')
    for field in ("client_email", "private_key", "token_uri"):
        if not isinstance(info.get(field), str) or not info[field]:
            raise ValueError(f"the Vertex service account key has no {field}")
    try:
        crypt.RSASigner.from_service_account_info(info)
    except ValueError:
        raise ValueError("the Vertex service account's private_key is not an RSA key") from None
    return info


def assertion(info: dict, now: float) -> str:
    """The JWT the token endpoint exchanges for an access token (RFC 7523)."""
    signer = crypt.RSASigner.from_service_account_info(info)
    payload = {"iss": info["client_email"], "scope": SCOPE, "aud": info["token_uri"],
               "iat": int(now), "exp": int(now) + 3600}  # fmt: skip
    return jwt.encode(signer, payload).decode()


class VertexKind(Kind):
    name = "vertex"
    protocol = "anthropic"

    def __init__(self) -> None:
        self.tokens = TokenCache()
        self._accounts: dict[str, dict] = {}

    def check_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - {"region", "project"})
        if unknown:
            raise ValueError(f"a vertex provider takes no option {unknown[0]!r}")
        region = options.get("region")
        if not isinstance(region, str) or not region.strip():
            raise ValueError('a vertex provider needs its region: {"region": "us-east5"}')
        if "project" in options and not isinstance(options["project"], str):
            raise ValueError("project must be a Google Cloud project id")
        return options

    def check_credential(self, credential: str) -> None:
        service_account(credential)

    def _account(self, provider: ProviderInfo) -> dict:
        info = self._accounts.get(provider.credential)
        if info is None:
            try:
                info = service_account(provider.credential)
            except ValueError as exc:
                raise ProxyError(
                    ErrorKind.UPSTREAM_CREDENTIAL,
                    f"Provider {provider.name!r}: {exc}. An admin must fix its credential.",
                ) from None
            self._accounts = {provider.credential: info}  # one account's key at a time
        return info

    async def access_token(self, provider: ProviderInfo) -> str:
        info = self._account(provider)

        async def fetch() -> Token:
            form = {"grant_type": GRANT_TYPE, "assertion": assertion(info, time.time())}
            return await request_token(provider, info["token_uri"], form)

        return await self.tokens.get(provider.credential, fetch)

    async def prepare(self, provider: ProviderInfo, request: ClientRequest) -> UpstreamRequest:
        info = self._account(provider)
        region = str(provider.option("region", ""))
        project = str(provider.option("project") or info.get("project_id") or "")
        base = (
            f"{provider.base_url}/v1/projects/{quote(project, safe='')}/locations/"
            f"{quote(region, safe='')}/publishers/anthropic/models/"
        )
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise ProxyError(ErrorKind.INVALID_REQUEST, "The request body is not JSON.") from None
        if not isinstance(data, dict):
            raise ProxyError(ErrorKind.INVALID_REQUEST, "The request body is not a JSON object.")
        data["anthropic_version"] = ANTHROPIC_VERSION
        if request.path == COUNT_TOKENS_PATH:
            url = base + "count-tokens:rawPredict"  # the model stays in the body here
            data["model"] = request.model
        else:
            data.pop("model", None)
            action = "streamRawPredict" if request.stream else "rawPredict"
            url = f"{base}{quote(request.model, safe='@')}:{action}"
        token = await self.access_token(provider)
        headers: Headers = [
            *[(k, v) for k, v in request.headers if k in PASSED],
            (b"content-type", b"application/json"),
            (b"accept-encoding", b"identity"),
            *[(k.encode(), v.encode()) for k, v in provider.extra_headers],
            (b"authorization", b"Bearer " + token.encode()),
        ]
        return UpstreamRequest("POST", url, headers, orjson.dumps(data))
