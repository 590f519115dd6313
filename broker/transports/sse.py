"""SSE (`/events`) and chunked HTTP (`/stream`): the same framing, different default lifetimes."""

from __future__ import annotations

import contextlib

from aiohttp import HttpVersion11, web

from broker.errors import ApiError
from broker.transports.framing import RawSSEFramer, SSEFramer
from broker.transports.reading import (
    authorize_reader,
    forward,
    heartbeat_header,
    socket_of,
    start_reading,
)
from broker.vocabulary import Transport

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # tells nginx-style proxies not to buffer the stream
}
CHUNKED_DEFAULT_MAX_DURATION = 50.0  # below WeChat's ~60 s cut of chunked requests


class _Stream(web.StreamResponse):
    # Headers go out with the stream's head, in one write: one syscall per reader, not two.
    _send_headers_immediately = False


def max_duration(request: web.Request, default: float | None) -> float | None:
    raw = request.query.get("max_duration")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 1.0 <= value <= 86_400.0:
        raise ApiError(400, "invalid_max_duration", "max_duration is seconds from 1 to 86400.")
    return value


async def events(request: web.Request) -> web.StreamResponse:
    # `?only=terminal`: the writer's way to hear of a cancel over HTTP (end/error/cancelled and
    # heartbeats only, from the channel's current end).
    only = request.query.get("only")
    if only not in (None, "terminal"):
        raise ApiError(400, "invalid_only", "only accepts one value: 'terminal'.")
    return await _serve(
        request, "sse", max_duration(request, None), terminal_only=only == "terminal"
    )


async def stream(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "chunked", max_duration(request, CHUNKED_DEFAULT_MAX_DURATION))


async def _serve(
    request: web.Request,
    transport: Transport,
    duration: float | None,
    *,
    terminal_only: bool = False,
) -> web.StreamResponse:
    ctx, channel_id, after = authorize_reader(request)
    reading = await start_reading(ctx, channel_id, after, transport, terminal_only=terminal_only)
    try:
        if reading.nothing_left:
            return web.Response(status=204)
        response = _Stream(headers={**SSE_HEADERS, **heartbeat_header(ctx)})
        # The connection closes with the stream (readers reconnect anyway). aiohttp takes the
        # response's keep-alive when the handler returns, over the protocol's (socket_of):
        # without this an ended stream's connection would idle for keepalive_timeout.
        response.force_close()
        if request.version >= HttpVersion11:  # HTTP/1.0 readers get the stream until close
            response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the reader went away; it will resume
            framing = SSEFramer if response.chunked else RawSSEFramer
            await forward(reading, framing(socket_of(request), response), duration)
        return response
    finally:
        await reading.close()
