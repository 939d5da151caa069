"""The one upstream HTTP client of each process, and the header rules both ways.

httpx is the client API (requests, responses, the transport interface); the transport is
aiohttp's, chosen by benchmark (DESIGN.md, docs/benchmarks.md). The proxy path hands its
``httpx.Request`` straight to the transport: a proxy must not follow redirects, run auth flows
or keep cookies, and skipping ``AsyncClient.send``'s machinery for them saves a third of the
client's cost per call. Swapping the transport is a change to ``_transport`` alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
import httpx
import orjson
import yarl
from django.conf import settings
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

from llmproxy.core.loopbound import PerLoop


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.LLMPROXY_POOL_SIZE,
        keepalive_timeout=60,
        enable_cleanup_closed=True,
    )
    # DummyCookieJar: upstream cookies must never travel from one user's call to another's.
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
    )


class ProxyTransport(AiohttpTransport):
    """httpx-aiohttp's transport without the conversions a proxy call does not need: the
    headers go to aiohttp decoded once (it would otherwise read them through the httpx
    ``Headers``, which decodes every header on each pass), the URL as the ``yarl.URL``
    ``Upstream`` parsed once per provider URL, the timeout object once per value; the proxy
    and SNI options httpx-aiohttp maps are never set by the gateway. Errors map as
    httpx-aiohttp maps them; the answer is its ``httpx.Response`` with the same stream."""

    def __init__(self) -> None:
        super().__init__(client=_session)
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}

    def _timeout(self, values: dict[str, float]) -> aiohttp.ClientTimeout:
        key = (values.get("connect"), values.get("read"), values.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            found = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
            if len(self._timeouts) < 100:
                self._timeouts[key] = found
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        extensions = request.extensions
        if "timeout" not in extensions or "sni_hostname" in extensions:
            return await super().handle_async_request(request)  # not a proxy call
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        with map_aiohttp_exceptions():
            try:
                data = request.content or None
            except httpx.RequestNotRead:
                data = request.stream
                headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
            response = await self.client.request(
                method=request.method,
                url=extensions.get("aiohttp_url") or str(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._timeout(extensions["timeout"]),
            ).__aenter__()
        answer = {"http_version": b"HTTP/1.1"}
        if response.reason:
            answer["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
            extensions=answer,
        )


def _transport() -> httpx.AsyncBaseTransport:
    return ProxyTransport()


def timeouts() -> dict[str, float]:
    """Read per call, so a changed setting applies to the next request."""
    connect = settings.LLMPROXY_CONNECT_TIMEOUT
    return {"connect": connect, "read": settings.LLMPROXY_READ_TIMEOUT, "write": connect,
            "pool": connect}  # fmt: skip


class Upstream:
    """The per-loop transport (one connection pool) and a client over it for rare calls."""

    def __init__(self) -> None:
        self.transport = _transport()
        self.client = httpx.AsyncClient(
            transport=self.transport,
            timeout=httpx.Timeout(**timeouts()),
            follow_redirects=False,
            trust_env=False,
        )
        self._urls: dict[str, tuple[httpx.URL, yarl.URL]] = {}
        self._ws_session: aiohttp.ClientSession | None = None

    def urls(self, text: str) -> tuple[httpx.URL, yarl.URL]:
        # Provider URLs repeat: parse each once (httpx's and yarl's parsers are not cheap).
        found = self._urls.get(text)
        if found is None:
            found = (httpx.URL(text), yarl.URL(text))
            if len(self._urls) < 1000:
                self._urls[text] = found
        return found

    async def send(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> httpx.Response:
        parsed, for_aiohttp = self.urls(url)
        request = httpx.Request(
            method, parsed, headers=headers, content=body,
            extensions={"timeout": timeouts(), "aiohttp_url": for_aiohttp},
        )  # fmt: skip
        return await self.transport.handle_async_request(request)

    async def websocket(
        self, url: str, headers: list[tuple[bytes, bytes]]
    ) -> aiohttp.ClientWebSocketResponse:
        """A websocket to the provider (Responses over websocket); aiohttp errors propagate."""
        if self._ws_session is None:
            self._ws_session = _session()
        return await self._ws_session.ws_connect(
            url,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            timeout=aiohttp.ClientWSTimeout(ws_receive=settings.LLMPROXY_READ_TIMEOUT),
            max_msg_size=0,  # a response.completed event carries the whole response
            autoping=True,
        )

    async def aclose(self) -> None:
        await self.client.aclose()  # closes the shared transport too
        if self._ws_session is not None:
            await self._ws_session.close()


_upstreams = PerLoop(Upstream)


def get() -> Upstream:
    return _upstreams.get()


async def close() -> None:
    existing = _upstreams.pop()
    if existing is not None:
        await existing.aclose()


class UpstreamClosed(ConnectionError):
    """The provider ended its side (a websocket closed) before the answer was complete."""


# What an upstream answer that breaks off mid-way raises, whichever client carries it.
BROKEN = (httpx.HTTPError, aiohttp.ClientError, ConnectionError, TimeoutError)


def header(response: httpx.Response, name: bytes) -> str:
    """One header of a provider's answer ('' when absent; the first when repeated), read off
    the raw list: httpx's ``headers.get`` decodes every header name on each call."""
    for key, value in response.headers.raw:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def pick_headers(
    headers: Iterable[tuple[bytes, bytes]],
    exact: frozenset[bytes],
    prefixes: tuple[bytes, ...],
) -> list[tuple[bytes, bytes]]:
    """Keep the headers named in ``exact`` or starting with one of ``prefixes``."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in exact or lowered.startswith(prefixes):
            kept.append((lowered, value))
    return kept


def is_timeout(exc: Exception) -> bool:
    """Did the provider fail to answer in time (rather than refuse, break or hang up)?

    httpx-aiohttp maps several aiohttp errors (connection refused, reset, the server closing
    without an answer) to ConnectTimeout, so look at the aiohttp exception underneath
    before trusting the httpx class.
    """
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, aiohttp.ServerTimeoutError):
        return False
    return isinstance(exc, httpx.TimeoutException | TimeoutError) or isinstance(cause, TimeoutError)


def describe(exc: BaseException) -> str:
    """An upstream error for logs and usage records: its class and message, never its repr
    (aiohttp's repr carries the request headers, the provider's credential among them)."""
    cause = exc.__cause__
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(cause, aiohttp.ClientError) and not str(exc):
        text += f" ({type(cause).__name__}: {cause})"
    return text[:500]


def error_message(body: bytes) -> str:
    """The message of a provider's JSON error body (either protocol's shape), else ''."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:300]
    if isinstance(error, str):
        return error[:300]
    return ""
