"""Checks `serve` makes before it says it is listening, so a wrong setting ends in one line that
says what failed and what to do (and a non-zero exit), never in a traceback."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit, urlunsplit

from broker.config import Settings

ENGINE_CHECK_TIMEOUT = 5.0  # seconds the first PING may take at start-up


class StartupError(Exception):
    """The broker cannot start; the message is the one line to print."""


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening socket on host:port. Without `reuse_port` the bind fails while any other
    socket listens on the port (SO_REUSEADDR only reuses ports in TIME_WAIT)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve --host {host!r}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; another process holds the "
            f"port (see `ss -ltnp 'sport = :{port}'`): stop it or choose another --port"
        ) from exc
    sock.set_inheritable(True)
    return sock


def check_port_free(host: str, port: int) -> None:
    """Refuse a port some other process listens on. Workers bind with SO_REUSEPORT, which the
    kernel grants to any process of the same user that also asks for it, so without this check
    a second broker (another secret, another Redis) would silently share the port."""
    listen_socket(host, port, reuse_port=False).close()


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def engine_error(settings: Settings, exc: BaseException) -> StartupError:
    reason = str(exc) or type(exc).__name__
    return StartupError(
        f"cannot reach Redis at {redact(settings.redis_url)} ({reason}); start Redis, or pass "
        "the right --redis URL (UNBROKEN_REDIS_URL)"
    )


async def _ping(settings: Settings) -> None:
    from broker.app import create_engine

    engine = create_engine(settings)
    try:
        await asyncio.wait_for(engine.ping(), ENGINE_CHECK_TIMEOUT)
    finally:
        await engine.close()


def check_engine(settings: Settings) -> None:
    """PING the engine's storage once, before any worker starts."""
    if settings.engine != "redis":
        return
    try:
        asyncio.run(_ping(settings))
    except TimeoutError as exc:
        silent = TimeoutError(f"no answer in {ENGINE_CHECK_TIMEOUT:g} s")
        raise engine_error(settings, silent) from exc
    except Exception as exc:  # any failure to connect or answer: say which, in one line
        raise engine_error(settings, exc) from exc
