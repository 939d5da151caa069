"""OAuth access tokens the cloud kinds fetch for themselves (Vertex's service accounts,
Azure's Entra applications): fetched once per credential, shared by every call, refreshed
before they expire, and one fetch at a time per credential however many calls wait.

A token endpoint that cannot be reached (or fails with a 5xx) raises CredentialUnreachable,
which fails over like a connection error; one that refuses the credential is the provider's
credential problem (502, never the client's 401).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import orjson

from llmproxy.gateway import upstream
from llmproxy.gateway.errors import ErrorKind, ProxyError
from llmproxy.gateway.kinds.base import CredentialUnreachable
from llmproxy.gateway.policy import ProviderInfo

# A token is replaced this long before it expires (or at half its life, if shorter), so no
# call goes up with a token that expires on the way.
REFRESH_MARGIN_SECONDS = 300.0


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # time.time()
    lifetime: float

    def fresh(self, now: float) -> bool:
        return now < self.expires_at - min(REFRESH_MARGIN_SECONDS, self.lifetime / 2)


class TokenCache:
    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._fetching: dict[tuple[int, str], asyncio.Future[Token]] = {}

    def clear(self) -> None:
        self._tokens.clear()

    async def get(self, credential: str, fetch: Callable[[], Awaitable[Token]]) -> str:
        # Keyed by a digest: the credential itself is never a key anyone could list.
        key = hashlib.sha256(credential.encode()).hexdigest()
        token = self._tokens.get(key)
        if token is not None and token.fresh(time.time()):
            return token.value
        loop = asyncio.get_running_loop()
        pending = self._fetching.get((id(loop), key))
        if pending is None:
            pending = loop.create_task(fetch())
            self._fetching[(id(loop), key)] = pending
            pending.add_done_callback(lambda _: self._fetching.pop((id(loop), key), None))
        token = await asyncio.shield(pending)
        self._tokens[key] = token
        return token.value


async def request_token(provider: ProviderInfo, url: str, form: dict[str, str]) -> Token:
    """POST the grant to the token endpoint; the access token it issues (see module doc)."""
    name = provider.name
    try:
        response = await upstream.get().client.post(
            url, data=form, headers={"accept": "application/json"}
        )
    except httpx.HTTPError as exc:
        raise CredentialUnreachable(
            f"The token endpoint of provider {name!r} could not be reached ({type(exc).__name__})."
        ) from None
    if response.status_code >= 500:
        raise CredentialUnreachable(
            f"The token endpoint of provider {name!r} failed (HTTP {response.status_code})."
        )
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        data = {}
    data = data if isinstance(data, dict) else {}
    value, lifetime = data.get("access_token"), data.get("expires_in", 3600)
    if response.status_code != 200 or not isinstance(value, str) or not value:
        said = data.get("error_description") or data.get("error") or ""
        raise ProxyError(
            ErrorKind.UPSTREAM_CREDENTIAL,
            f"The token endpoint of provider {name!r} refused the gateway's credential "
            f"(HTTP {response.status_code}" + (f": {str(said)[:200]}" if said else "")
            + "). Your own key is fine; an admin must fix the provider's credential.",
        )  # fmt: skip
    try:
        lifetime = float(lifetime)
    except (TypeError, ValueError):
        lifetime = 3600.0
    return Token(value, time.time() + lifetime, lifetime)
