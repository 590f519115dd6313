"""SSE (`/events`) and chunked HTTP (`/stream`): the same framing, different default lifetimes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from aiohttp import HttpVersion11, web

from broker.errors import ApiError
from broker.events import Event
from broker.hub import Closed, as_socket
from broker.transports.reading import (
    Reading,
    authorize_reader,
    gap_json,
    heartbeat_header,
    reconnect_json,
    start_reading,
)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # tells nginx-style proxies not to buffer the stream
}
CHUNKED_DEFAULT_MAX_DURATION = 50.0  # below WeChat's ~60 s cut of chunked requests
HEARTBEAT = b": hb\n\n"


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
    request: web.Request, transport: str, duration: float | None, *, terminal_only: bool = False
) -> web.StreamResponse:
    ctx, channel_id, after = authorize_reader(request)
    reading = await start_reading(ctx, channel_id, after, transport, terminal_only=terminal_only)
    try:
        if reading.nothing_left:
            return web.Response(status=204)
        response = web.StreamResponse(headers={**SSE_HEADERS, **heartbeat_header(ctx)})
        if request.version >= HttpVersion11:  # HTTP/1.0 readers get the stream until close
            response.enable_chunked_encoding()
        await response.prepare(request)
        _attach_direct_writes(reading, request, response)
        with contextlib.suppress(ConnectionError):  # the reader went away; it will resume
            await _forward(reading, response, duration)
        return response
    finally:
        await reading.close()


async def _forward(reading: Reading, response: web.StreamResponse, duration: float | None) -> None:
    heartbeat = reading.ctx.settings.heartbeat
    head = b"retry: 1000\n\n"
    if reading.gap is not None:
        head += f"event: gap\ndata: {gap_json(reading.gap)}\n\n".encode()
    await response.write(head)
    async for page in reading.backlog():
        await response.write(b"".join(event.sse for event in page))
        if page[-1].terminal:
            return
    deadline = None if duration is None else time.monotonic() + duration
    subscriber = reading.subscriber
    while True:
        wait = heartbeat if deadline is None else min(heartbeat, deadline - time.monotonic())
        try:
            batch = await subscriber.next_batch(max(wait, 0.0))
        except Closed as closed:
            await response.write(_reconnect(closed.reason))
            return
        if batch:
            await response.write(b"".join(event.sse for event in batch))
            if batch[-1].terminal:
                return
        elif deadline is not None and time.monotonic() >= deadline:
            await response.write(_reconnect("max_duration"))
            return
        else:
            await response.write(HEARTBEAT)


def _attach_direct_writes(
    reading: Reading, request: web.Request, response: web.StreamResponse
) -> None:
    socket = as_socket(request.transport)
    if socket is None:
        return
    if response.chunked:

        def write(events: Sequence[Event]) -> None:
            socket.write(b"".join(event.sse_chunk for event in events))
    else:

        def write(events: Sequence[Event]) -> None:
            socket.write(b"".join(event.sse for event in events))

    reading.subscriber.attach_socket(socket, write)


def _reconnect(reason: str) -> bytes:
    return f"event: reconnect\ndata: {reconnect_json(reason)}\n\n".encode()
