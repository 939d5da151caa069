"""The gateway's server: uvicorn with the limits at the edge the application cannot set.

    llmproxy serve [--host 127.0.0.1] [--port 8000] [--workers N] [...]
    python -m llmproxy serve ...

The application sees a request only once its head (request line and headers) is complete,
and uvicorn's parser (httptools) holds a head for as long as it takes to arrive and however
big it grows: a client could make a worker hold any amount of memory, or a connection for
ever, without sending a key. ``EdgeHttpProtocol`` bounds both: a head still incomplete past
``LLMPROXY_MAX_HEADER_BYTES`` (plus its line breaks) gets a 431 and the connection is
closed; a head not complete within ``LLMPROXY_HEADER_TIMEOUT_SECONDS`` of the connection or
of its first byte gets a 408 and is closed (a connection that sent nothing is just closed).
Client websocket messages are capped at ``LLMPROXY_MAX_FRAME_BYTES`` (uvicorn's
``ws_max_size``: a bigger one closes the socket with 1009). See docs/operations.md.

What uvicorn offers itself: its h11 protocol caps an incomplete head
(``--h11-max-incomplete-event-size``, 16 KiB by default, answered with a 400) but parses in
Python, slower than httptools; neither protocol has a deadline for a head (or for a
connection that sends nothing): ``--timeout-keep-alive`` runs only between requests, and
``--limit-concurrency`` counts connections and requests once a head is complete.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource

import uvicorn
from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import MAX_LINE_LENGTH as WS_MAX_LINE
from websockets.http11 import MAX_NUM_HEADERS as WS_MAX_HEADERS

from llmproxy.core import draining, login_client

APPLICATION = "llmproxy.asgi:application"
# A head the application would accept, with its framing: ": " and CRLF per header, the
# method, the protocol version and the blank line.
FRAMING_PER_HEADER = 4
FRAMING = 256


class HeadWithBody:
    """The transport as one response's cycle sees it: the head of a response with a length
    is written together with the body's first write (uvicorn writes it on its own the moment
    the application starts the response, and the body right after): one ``writev`` and one
    packet to the client instead of two syscalls, two packets and, often, two wake-ups of the
    client. A streamed (chunked) head goes out at once, as does ``100 Continue``; the body's
    first write comes within the same ``send`` of a buffered answer, and a response that
    completes or closes without a body write (HEAD) still gets its head.
    """

    __slots__ = ("head", "started", "transport")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self.started = False

    def write(self, data) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.writelines((head, data))
            return
        if not self.started and not data.startswith(b"HTTP/1.1 100 "):
            self.started = True  # this is the response's head (uvicorn lowercases names)
            if b"\r\ncontent-length: " in data and b"\r\ntransfer-encoding: " not in data:
                self.head = data
                return
        self.transport.write(data)

    def flush(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str):
        return getattr(self.transport, name)


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline on each request head."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_limit = (
            settings.LLMPROXY_MAX_HEADER_BYTES
            + FRAMING_PER_HEADER * settings.LLMPROXY_MAX_HEADERS
            + FRAMING
        )
        self.head_timeout = settings.LLMPROXY_HEADER_TIMEOUT_SECONDS
        # Bytes received of the head in progress; None while a body (or nothing) is expected.
        # Counted by whole reads, so a head is cut within one read (<= 256 KiB) of the limit.
        self.head_bytes: int | None = 0
        self.head_started = False
        self.head_timer: asyncio.TimerHandle | None = None
        self.in_message = False  # a request is being received (its head or its body)
        # The rest of a body the application answered before reading it: thrown away.
        self.drain_bytes = 0
        self.drain_timer: asyncio.TimerHandle | None = None
        self.upgrade_refused = False

    # --- the connection ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_drain()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_bytes is not None:
            self.head_bytes += len(data)
        if self.drain_timer is not None:
            self.drain_bytes += len(data)
            if self.drain_bytes > settings.LLMPROXY_MAX_BODY_BYTES:
                self._stop_drain()
                self.transport.close()
                return
        super().data_received(data)
        if (
            self.head_bytes is not None
            and self.head_bytes > self.head_limit
            and not self.transport.is_closing()
        ):
            limit = settings.LLMPROXY_MAX_HEADER_BYTES
            self._refuse(431, f"The request's headers are larger than {limit} bytes.")

    # --- the parser's callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_message = True
        if self.head_bytes is None:
            self.head_bytes = 0
        self.head_started = True
        self._start_head_timer()

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        self.head_started = False
        self._stop_head_timer()
        if self.parser.should_upgrade() and self._should_upgrade():
            message = self._upgrade_refusal()
            if message is not None:
                self.upgrade_refused = True
                self._refuse(431, message)
                return
        super().on_headers_complete()

    def _start_asgi_task(self, cycle, app) -> None:
        cycle.transport = transport = HeadWithBody(cycle.transport)
        completed = cycle.on_response

        def on_response() -> None:  # a response without a body write (HEAD) has its head
            transport.flush()
            completed()

        cycle.on_response = on_response
        super()._start_asgi_task(cycle, app)

    def handle_websocket_upgrade(self) -> None:
        if not self.upgrade_refused:
            super().handle_websocket_upgrade()

    def _upgrade_refusal(self) -> str | None:
        """Why a websocket upgrade's head is refused here, if it is: over the gateway's
        header limits, or more than the websocket library parses (it would answer nothing
        and hold the connection)."""
        from llmproxy.gateway.edge import header_error

        error = header_error(len(self.url), self.headers)
        if error is not None:
            return error.message
        if len(self.headers) > WS_MAX_HEADERS:
            return f"A websocket upgrade may carry at most {WS_MAX_HEADERS} headers."
        for name, value in self.headers:
            if len(name) + len(value) + 2 > WS_MAX_LINE:
                return (
                    f"The header {name.decode('latin-1')!r} is longer than a websocket "
                    f"upgrade takes ({WS_MAX_LINE} bytes a line)."
                )
        return None

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_message = False
        self.head_bytes = 0  # what comes next on this connection is the next request's head
        if self.drain_timer is not None:
            # The rest of a body answered early arrived: the connection goes on, idle.
            self._stop_drain()
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.in_message and not self.transport.is_closing():
            # Answered before the body was read (a bad key, ...): httptools reads the rest
            # and throws it away; it must end within the body deadline and the body limit.
            self.drain_bytes = 0
            self.drain_timer = self.loop.call_later(
                settings.LLMPROXY_BODY_TIMEOUT_SECONDS, self._drain_expired
            )

    # --- the limits -----------------------------------------------------------------------------

    def _start_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _stop_drain(self) -> None:
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None

    def _drain_expired(self) -> None:
        self.drain_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if not self.head_started:
            self.transport.close()  # connected, sent nothing: like an idle keep-alive
            return
        self._refuse(
            408, f"The request's headers did not arrive within {self.head_timeout:g} seconds."
        )

    def _refuse(self, status: int, message: str) -> None:
        """Answer in the client's protocol, as far as the head tells it, and close."""
        from llmproxy.gateway.consumers import head_refusal

        self._stop_head_timer()
        self.head_bytes = None
        path = getattr(self, "url", b"").split(b"?", 1)[0].decode("latin-1")
        self.transport.write(head_refusal(status, message, path, self.headers or []))
        self.transport.close()


class DrainingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, but a shutdown while draining does not cut the socket
    at once (uvicorn closes every open websocket with 1012 when it begins to shut down):
    the application finishes the turn in flight and closes the socket itself, telling the
    client to reconnect (``sockets.ResponsesSocket``). A socket still open near the end of
    the grace period gets uvicorn's 1012."""

    def shutdown(self) -> None:
        if not draining.is_draining() or not self.handshake_complete or self.close_sent:
            super().shutdown()
            return
        late = max(settings.LLMPROXY_DRAIN_GRACE_SECONDS - 1.0, 0.0)
        self.loop.call_later(late, self._shutdown_late)

    def _shutdown_late(self) -> None:
        if not self.transport.is_closing():
            super().shutdown()


def server_options() -> dict:
    """What ``llmproxy serve`` sets on uvicorn besides the command line."""
    return {
        "http": EdgeHttpProtocol,
        "ws": DrainingWebSocketProtocol,
        "ws_max_size": settings.LLMPROXY_MAX_FRAME_BYTES,
        # After the listener closes, open calls get this long to finish.
        "timeout_graceful_shutdown": settings.LLMPROXY_DRAIN_GRACE_SECONDS,
    }


def config(app, **options) -> uvicorn.Config:
    """uvicorn's Config with the gateway's limits: ``llmproxy serve``, the tests, bench."""
    for name, value in server_options().items():
        options.setdefault(name, value)
    return uvicorn.Config(app, **options)


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: every held stream takes two (the
    client's connection and the provider's), and the usual soft limit of 1,024 would refuse
    connections past about 500 streams. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")
    parser = argparse.ArgumentParser(prog="llmproxy", description="The llmproxy gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the gateway (uvicorn with the limits at the edge)",
        description="Serve llmproxy.asgi:application with uvicorn and the gateway's limits "
        "at the edge (docs/operations.md). Every other setting comes from the environment.",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--uds", help="listen on this Unix socket instead")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        help="uvicorn's: connections plus requests in progress per worker beyond which "
        "new requests get a 503 (default: no limit)",
    )
    serve.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        help="seconds an idle keep-alive connection stays open (default 5)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        help="IPs whose X-Forwarded-For / -Proto are trusted (uvicorn's; default 127.0.0.1)",
    )
    serve.add_argument(
        "--worker-start-timeout",
        type=int,
        default=60,
        help="seconds a new worker may take to start (a SIGHUP replaces the workers one by "
        "one, each new one serving before the old one drains; default 60)",
    )
    serve.add_argument(
        "--backlog",
        type=int,
        default=8192,
        help="connections the kernel queues for a worker to accept (default 8192; the kernel "
        "caps it at net.core.somaxconn). uvicorn's 2048 overflowed at 1,000 new streams a "
        "second on a busy worker, and an overflowed queue resets connections",
    )
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--no-access-log", action="store_true")
    _sign_in_commands(commands)
    args = parser.parse_args(argv)
    if args.command != "serve":
        # A developer's machine: no Django settings, no database, only the sign-in.
        code = login_client.run(args.command, args.gateway, open_browser=args.browser)
        raise SystemExit(code)
    raise_open_files_limit()
    uvicorn.run(
        APPLICATION,
        host=args.host,
        port=args.port,
        uds=args.uds,
        workers=args.workers,
        limit_concurrency=args.limit_concurrency,
        backlog=args.backlog,
        timeout_keep_alive=args.timeout_keep_alive,
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        timeout_worker_healthcheck=args.worker_start_timeout,
        **server_options(),
    )


def _sign_in_commands(commands) -> None:
    login = commands.add_parser(
        "login",
        help="sign in to a gateway from this terminal (for Codex and apiKeyHelper)",
        description="Sign in to an llmproxy gateway with the device flow: approve the code "
        "shown here on the gateway's /device page. Credentials are kept in "
        "$XDG_CONFIG_HOME/llmproxy/credentials.json (mode 0600).",
    )
    login.add_argument("--gateway", required=True, help="the gateway's URL")
    login.add_argument("--browser", action="store_true", help="open the page in a browser")
    token = commands.add_parser(
        "token",
        help="print a current access token (Codex's auth command, Claude Code's apiKeyHelper)",
        description="Print a current access token, refreshed when needed. Exits 1 with a "
        "message to run `llmproxy login` when signed out or revoked.",
    )
    logout = commands.add_parser("logout", help="revoke this terminal's sign-in and forget it")
    for parser in (token, logout):
        parser.add_argument("--gateway", help="the gateway's URL (default: the last signed in)")
        parser.set_defaults(browser=False)


if __name__ == "__main__":
    main()
