"""WebSocket (`/ws`): one JSON text frame per event, application-level pings.

Mini-program socket APIs never show protocol pings to the app, so the heartbeat is a frame the
client's watchdog can see.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiohttp import WSMsgType, web

from broker import metrics
from broker.errors import ApiError, as_api_error, error_body, error_response
from broker.events import Event, dumps
from broker.hub import Closed, as_socket
from broker.transports.reading import Reading, authorize_reader, heartbeat_header, start_reading

PING = '{"type":"ping"}'


async def websocket(request: web.Request) -> web.StreamResponse:
    # Uncompressed, so the hub can write each event's cached frame straight to the socket.
    socket = web.WebSocketResponse(max_msg_size=64 * 1024, compress=False)
    try:
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
        _attach_direct_writes(reading, request)
        if reading.nothing_left:
            await socket.close(code=1000, message=b"ended")
            return socket
        # The client's frames must be read for close handshakes to complete; a closed socket
        # also ends the forwarding at once instead of at the next heartbeat.
        listener = asyncio.create_task(_listen(socket, reading))
        try:
            await _forward(reading, socket)
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


def _attach_direct_writes(reading: Reading, request: web.Request) -> None:
    socket = as_socket(request.transport)
    if socket is None:
        return

    def write(events: Sequence[Event]) -> None:
        socket.write(b"".join(event.ws_frame for event in events))

    reading.subscriber.attach_socket(socket, write)


async def _listen(socket: web.WebSocketResponse, reading: Reading) -> None:
    async for message in socket:
        if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            break
    reading.subscriber.close("client_closed")


async def _forward(reading: Reading, socket: web.WebSocketResponse) -> None:
    heartbeat = reading.ctx.settings.heartbeat
    if reading.gap is not None:
        await socket.send_str(dumps({"type": "gap", "first_id": reading.gap}))
    async for page in reading.backlog():
        for event in page:
            await socket.send_str(event.ws)
        if page[-1].terminal:
            await socket.close(code=1000, message=page[-1].type.encode())
            return
    subscriber = reading.subscriber
    while not socket.closed:
        try:
            batch = await subscriber.next_batch(heartbeat)
        except Closed as closed:
            if closed.reason != "client_closed":
                await socket.send_str(dumps({"type": "reconnect", "reason": closed.reason}))
                await socket.close(code=1012 if closed.reason == "shutdown" else 1013)
            return
        if not batch:
            await socket.send_str(PING)
            continue
        for event in batch:
            await socket.send_str(event.ws)
        if batch[-1].terminal:
            await socket.close(code=1000, message=batch[-1].type.encode())
            return
