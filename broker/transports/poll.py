"""Long-poll (`/poll`): a JSON batch at once when events follow the reader's id, else the first
events within `timeout` seconds. Works with a plain request on every platform."""

from __future__ import annotations

from aiohttp import web

from broker.engine.base import ChannelNotFound, ReadResult
from broker.errors import ApiError
from broker.events import Event
from broker.hub import Closed
from broker.transports.framing import poll_body
from broker.transports.reading import (
    POLL_BYTES,
    authorize_reader,
    gone,
    read_bounded,
    start_reading,
)

DEFAULT_TIMEOUT = 25.0
MAX_TIMEOUT = 55.0
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


def _parameters(request: web.Request) -> tuple[float, int]:
    try:
        timeout = float(request.query.get("timeout", DEFAULT_TIMEOUT))
        if not 0 <= timeout <= MAX_TIMEOUT:
            raise ValueError
    except ValueError as exc:
        raise ApiError(
            400, "invalid_timeout", f"timeout is seconds from 0 to {MAX_TIMEOUT:g}."
        ) from exc
    try:
        limit = int(request.query.get("limit", DEFAULT_LIMIT))
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError as exc:
        raise ApiError(400, "invalid_limit", f"limit is an integer from 1 to {MAX_LIMIT}.") from exc
    return timeout, limit


def _batch(events: list[Event], after: str | None, ended: bool, gap: str | None) -> web.Response:
    last = events[-1].id if events else after
    # "ended" tells the client to stop polling: it has (now) seen the terminal event.
    ended = events[-1].terminal if events else ended
    return web.Response(text=poll_body(events, last, ended, gap), content_type="application/json")


async def poll(request: web.Request) -> web.Response:
    ctx, channel_id, after = authorize_reader(request)
    timeout, limit = _parameters(request)
    try:
        await ctx.engine.expire_writers([channel_id])  # a dead writer's channel ends now
        page: ReadResult = await read_bounded(ctx, channel_id, after, limit, POLL_BYTES)
    except ChannelNotFound as exc:
        raise gone(channel_id) from exc
    if page.events or page.ended or timeout == 0:
        return _batch(page.events, after, page.ended, page.gap)
    # Nothing yet: subscribe, then read again so an event appended in between is not missed.
    reading = await start_reading(ctx, channel_id, after, "poll")
    try:
        if reading.first.events or reading.first.ended:
            first = reading.first
            return _batch(first.events[:limit], after, first.ended, first.gap)
        try:
            events = await reading.subscriber.next_batch(timeout)
        except Closed:
            events = []
        return _batch(events[:limit], after, False, None)
    finally:
        await reading.close()
