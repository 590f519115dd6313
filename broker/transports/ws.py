"""WebSocket (`/ws`): one JSON text frame per event, application-level pings.

Mini-program socket APIs never show protocol pings to the app, so the heartbeat is a frame the
client's watchdog can see.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from broker import metrics
from broker.errors import ApiError, as_api_error, error_body, error_response
from broker.events import dumps
from broker.health import require_engine
from broker.transports.framing import WS_CLOSE_TIMEOUT, WSFramer
from broker.transports.reading import (
    Reading,
    authorize_reader,
    forward,
    heartbeat_header,
    socket_of,
    start_reading,
)


async def websocket(request: web.Request) -> web.StreamResponse:
    # Uncompressed, so the hub can write each event's cached frame straight to the socket.
    socket = web.WebSocketResponse(max_msg_size=64 * 1024, compress=False, timeout=WS_CLOSE_TIMEOUT)
    try:
        await require_engine(request)  # fail fast while the engine is known to be down
        ctx, channel_id, after = authorize_reader(request)
        reading = await start_reading(ctx, channel_id, after, "ws")
    except Exception as exc:
        error = as_api_error(exc, request.match_info.get("channel_id"))
        if error is None:
            raise
        return await _reject(request, socket, error)
    try:
        socket.headers.update(heartbeat_header(ctx))
        await socket.prepare(request)
        if reading.nothing_left:
            await socket.close(code=1000, message=b"ended")
            return socket
        # The client's frames must be read for close handshakes to complete; a closed socket
        # also ends the forwarding at once instead of at the next heartbeat.
        listener = asyncio.create_task(_listen(socket, reading))
        try:
            await forward(reading, WSFramer(socket_of(request), socket), None)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        return socket
    except (ConnectionResetError, ConnectionError):
        return socket
    finally:
        await reading.close()


async def _reject(
    request: web.Request, socket: web.WebSocketResponse, error: ApiError
) -> web.StreamResponse:
    if not socket.can_prepare(request).ok:
        return error_response(error)
    metrics.count_error(request, error.status, error.code)  # the upgraded 101 hides the error
    await socket.prepare(request)
    await socket.send_str(dumps({"type": "rejected", **error_body(error.code, error.message)}))
    await socket.close(code=4000 + error.status, message=error.code.encode()[:120])
    return socket


async def _listen(socket: web.WebSocketResponse, reading: Reading) -> None:
    async for message in socket:
        if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            break
    reading.subscriber.close("client_closed")
