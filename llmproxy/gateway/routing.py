"""ASGI routing: proxy paths to Channels consumers, the rest to Django.

A dict lookup on the exact path keeps routing off the hot path's profile; the proxy paths are
few and fixed, so regex URL resolution buys nothing here. Every proxy path also answers under
a protocol prefix (``/anthropic/v1/messages``) so one gateway can host several protocols.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from llmproxy.gateway import edge
from llmproxy.gateway.consumers import ProxyConsumer, head_ok, not_found, read_first, refuse
from llmproxy.gateway.protocols import anthropic, openai
from llmproxy.gateway.sockets import ResponsesSocket

ASGIApp = Callable[..., Awaitable[None]]

# Claude Code's warm-up HEAD goes to its base URL, with or without a prefix.
HEAD_PATHS = frozenset({"/", "/anthropic", "/anthropic/", "/openai", "/openai/"})
# Everything under these belongs to the proxy: an unknown path is a 404 in its protocol.
PROXY_PREFIXES = ("/v1/", "/anthropic/", "/openai/")


def proxy_routes() -> dict[str, ASGIApp]:

    def consumer(protocol, endpoint) -> ASGIApp:
        return ProxyConsumer.as_asgi(protocol=protocol, endpoint=endpoint)

    by_prefix = {
        "/anthropic": {
            "/v1/messages": consumer(anthropic.PROTOCOL, anthropic.MESSAGES),
            "/v1/messages/count_tokens": consumer(anthropic.PROTOCOL, anthropic.COUNT_TOKENS),
            "/v1/models": consumer(anthropic.PROTOCOL, None),
        },
        "/openai": {
            "/v1/responses": consumer(openai.PROTOCOL, openai.RESPONSES),
            "/v1/responses/compact": consumer(openai.PROTOCOL, openai.COMPACT),
            "/v1/chat/completions": consumer(openai.PROTOCOL, openai.CHAT),
            "/v1/models": consumer(openai.PROTOCOL, None),
        },
    }
    routes: dict[str, ASGIApp] = {}
    for prefix, table in by_prefix.items():
        for path, app in table.items():
            routes[prefix + path] = app
            routes.setdefault(path, app)
    # Unprefixed, the model list answers in the shape the client's headers ask for.
    routes["/v1/models"] = consumer(None, None)
    return routes


def websocket_routes() -> dict[str, ASGIApp]:

    app = ResponsesSocket.as_asgi()
    return {"/v1/responses": app, "/openai/v1/responses": app}


def http_router(fallback: ASGIApp) -> ASGIApp:

    routes = proxy_routes()
    fallback = read_first(fallback)

    async def route(scope, receive, send):
        error = edge.scope_header_error(scope)
        if error is not None:  # on every path: the admin and the API too
            await refuse(scope, receive, send, error)
            return
        path = scope["path"]
        app = routes.get(path)
        if app is None and path.endswith("/") and len(path) > 1:
            app = routes.get(path[:-1])  # /v1/messages/ is /v1/messages
        if app is None and scope["method"] == "HEAD" and path in HEAD_PATHS:
            app = head_ok
        if app is None and path.startswith(PROXY_PREFIXES):
            app = not_found
        await (app or fallback)(scope, receive, send)

    return route


def websocket_router() -> ASGIApp:
    routes = websocket_routes()

    async def route(scope, receive, send):
        app = routes.get(scope["path"])
        if app is None:
            # No such socket: refuse the handshake (the server answers 403).
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        await app(scope, receive, send)

    return route
