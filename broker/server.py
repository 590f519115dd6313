"""The HTTP server around the app: JSON answers to malformed requests, header and idle timeouts,
a connection cap, and the process's file-descriptor limit.

aiohttp answers requests it cannot parse with a plain-text 400 that echoes the input and logs an
ERROR traceback for each; it waits an hour for a silent connection and takes connections until
the process runs out of file descriptors. A hostile or broken client must cost one log line and a
clear JSON refusal, and never starve other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import resource
import signal
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from broker.errors import error_body

log = logging.getLogger("unbroken.http")

FD_RESERVE = 64  # descriptors kept for Redis connections, log files and the listening sockets
REFUSAL_LINGER = 0.5  # seconds a refused connection is drained before it is closed


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def connection_cap(configured: int, fd_limit: int) -> int:
    """The connection cap: the configured one, never more than the descriptors allow."""
    room = max(1, fd_limit - FD_RESERVE)
    if configured <= 0:
        return room
    if configured > room:
        log.warning(
            "max_connections %d is above what the open-files limit allows; using %d",
            configured,
            room,
        )
        return room
    return configured


def raw_json_response(status: int, code: str, message: str, **headers: str) -> bytes:
    """A complete HTTP/1.1 response, for connections that never get a request object."""
    body = json.dumps(error_body(code, message)).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for a request the HTTP parser refused. The message never echoes
    the input: it could be a megabyte, or HTML meant for whoever reads the answer."""
    if isinstance(exc, LineTooLong):
        if _raised_in(exc, "cb_on_url"):
            return 414, "uri_too_long", "The request target is too long; send fewer parameters."
        return 431, "headers_too_large", "A request header or the request line is too long."
    if isinstance(exc, BadHttpMethod) and _unknown_method(exc):
        return 501, "method_not_implemented", "The broker does not implement this HTTP method."
    message = getattr(exc, "message", "")
    if isinstance(message, str) and message.startswith("Too many headers"):
        return 431, "headers_too_large", "The request has too many header fields."
    return 400, "bad_request", "The request is not valid HTTP/1.1."


_METHOD_IN_MESSAGE = re.compile(r"b'([^ ']*)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")


def _unknown_method(exc: BadHttpMethod) -> bool:
    """A well-formed method the broker lacks (501), not garbage or TLS bytes (400)."""
    found = _METHOD_IN_MESSAGE.search(str(getattr(exc, "message", "")))
    return found is not None and _TOKEN.fullmatch(found.group(1)) is not None


def _raised_in(exc: BaseException, function: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        # Cython frames carry the qualified name ("aiohttp._http_parser.cb_on_url").
        if tb.tb_frame.f_code.co_name.rpartition(".")[2] == function:
            return True
        tb = tb.tb_next
    return False


class BrokerServer(Server):
    """aiohttp's Server with a connection cap and broker request handlers."""

    def __init__(
        self, *args: Any, header_timeout: float, max_connections: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.refused = 0  # connections turned away at the cap
        self.timed_out = 0  # connections closed for not sending a request head in time
        self._last_refusal_log = 0.0

    def __call__(self) -> RequestHandler:
        return BrokerRequestHandler(self, loop=self._loop, **self._kwargs)

    def at_capacity(self) -> bool:
        return len(self._connections) >= self.max_connections

    def note_refusal(self) -> None:
        self.refused += 1
        now = self._loop.time()
        if now - self._last_refusal_log >= 10:  # one line per 10 s however hard it is pushed
            self._last_refusal_log = now
            log.warning(
                "connection cap reached (%d open): refusing new connections (%d so far)",
                len(self._connections),
                self.refused,
            )


_AT_CAPACITY = raw_json_response(
    503,
    "too_many_connections",
    "The broker is at its connection limit; retry shortly or use another broker.",
    Retry_After="1",
)
_HEADER_TIMEOUT = raw_json_response(
    408, "request_timeout", "The request head did not arrive in time."
)


class BrokerRequestHandler(RequestHandler):
    """One connection: refused at the cap, closed when a request head is too slow, and answered
    in JSON when the request cannot be parsed."""

    def __init__(self, manager: BrokerServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._broker_server = manager
        self._head_deadline: asyncio.TimerHandle | None = None
        self._refused: asyncio.TimerHandle | None = None
        self._heads_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._broker_server
        if server.at_capacity():
            # Not registered with the server and never parsed: answer, close, forget.
            self._force_close = True
            server.note_refusal()
            stream = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
            stream.write(_AT_CAPACITY)
            if stream.can_write_eof():
                stream.write_eof()
            # Closing with the client's request unread would reset the connection and could
            # destroy the answer in flight: read (and drop) what comes for a moment, then close.
            self._refused = self._loop.call_later(REFUSAL_LINGER, stream.close)
            return
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_deadline()
        if self._refused is not None:
            self._refused.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes that arrive while the connection waits for a request start a request head, which
        # must be complete within header_timeout (a slowloris sends it a byte at a time).
        waiting = self._waiter is not None and not self._messages and not self._upgraded
        queued = len(self._messages)
        super().data_received(data)
        if self._current_request is not None and len(self._messages) > queued:
            self._fail_current_body()
        if self._request_count != self._heads_seen:
            self._heads_seen = self._request_count
            self._disarm_head_deadline()
        elif waiting and not self._force_close:
            self._arm_head_deadline()

    def _fail_current_body(self) -> None:
        # aiohttp queues a body's parse error (a bad chunk size) as a new request and leaves the
        # handler reading the body forever; hand the error to that body instead, and take no
        # more requests on this connection.
        message, _ = self._messages[-1]
        if isinstance(message, _ErrInfo) and self._current_request is not None:
            self._messages.pop()
            body = self._current_request.content
            body.set_exception(message.exc)
            body.feed_eof()  # the handler reads the error; aiohttp does not linger on the rest
            self.close()

    def _arm_head_deadline(self) -> None:
        timeout = self._broker_server.header_timeout
        if self._head_deadline is None and timeout > 0:
            self._head_deadline = self._loop.call_later(timeout, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._request_count != self._heads_seen or self._request_in_progress:
            return
        self._broker_server.timed_out += 1
        log.debug("closing a connection whose request head took over %ss", self.header_timeout)
        if self.transport is not None:
            self.transport.write(_HEADER_TIMEOUT)
        self.force_close()

    @property
    def header_timeout(self) -> float:
        return self._broker_server.header_timeout

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of an answer went out: the link is broken
            raise ConnectionError("Response is sent already, cannot send an error response")
        if isinstance(exc, HttpProcessingError) and status != 500:
            status, code, text = classify(exc)
            log.info(
                "refused a malformed request from %s: %d %s (%s)",
                request.remote,
                status,
                code,
                type(exc).__name__,
            )
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            status, code = 500, "internal_error"
            text = "The broker failed unexpectedly; retry, and report it if it persists."
        response = web.json_response(error_body(code, text), status=status)
        response.force_close()
        return response


class BrokerRunner(web.AppRunner):
    """An AppRunner whose server is a BrokerServer."""

    def __init__(
        self, app: web.Application, *, header_timeout: float, max_connections: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._max_connections = max_connections

    async def _make_server(self) -> Server:
        plain = await super()._make_server()
        return BrokerServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            header_timeout=self._header_timeout,
            max_connections=self._max_connections,
            **plain._kwargs,
        )


def runner_for(
    app: web.Application,
    *,
    header_timeout: float,
    keepalive_timeout: float,
    max_connections: int,
    shutdown_timeout: float,
    access_log: logging.Logger | None = None,
) -> BrokerRunner:
    return BrokerRunner(
        app,
        header_timeout=header_timeout,
        max_connections=max_connections,
        keepalive_timeout=keepalive_timeout,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout,
        access_log=access_log,
    )


async def serve_until_signalled(
    runner: BrokerRunner, sock: socket.socket, *, on_listening: Callable[[], None]
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (the app drains its readers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        on_listening()
        await stop.wait()
    finally:
        await runner.cleanup()
