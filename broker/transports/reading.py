"""What every reader transport shares: authorization, the resume position, and the hand-over
from replay (stored events after the reader's id) to live delivery with no gap and no duplicate.

The reader subscribes to live events *before* reading the backlog; events that arrive during the
replay wait in its queue and are dropped there if the replay already handed them over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from broker import metrics
from broker.auth import authorize_channel
from broker.context import BrokerContext, context_of
from broker.engine.base import ChannelNotFound, ReadResult
from broker.errors import ApiError
from broker.events import Event, id_before, parse_event_id
from broker.hub import Closed, Socket, Subscriber, as_socket
from broker.transports.framing import Framer
from broker.vocabulary import Transport

# Replay reads the backlog in pages bounded by count and by stored bytes, and writes each page
# in slices that wait for the socket to drain, so a reader costs the broker about one page and
# one slice however long the history is and however slowly it reads.
PAGE_SIZE = 500  # events per page at most
PAGE_BYTES = 256 * 1024  # stored (msgpack) bytes per page, about: at least one event
FIRST_COUNT = 4  # events of a page's first read, before their sizes are known
SLICE_BYTES = 64 * 1024  # per write; aiohttp waits for the socket to drain past 64 KiB
POLL_BYTES = 1024 * 1024  # stored bytes per long-poll answer, about

log = logging.getLogger("unbroken.readers")


def resume_position(request: web.Request) -> str | None:
    """The reader's last event id: `?last_event_id=` wins over the `Last-Event-ID` header."""
    value = request.query.get("last_event_id")
    if value is None:
        value = request.headers.get("Last-Event-ID")
    if value is None or value == "":
        return None
    try:
        parse_event_id(value)
    except ValueError as exc:
        raise ApiError(
            400,
            "bad_last_event_id",
            f"{value!r} is not an event id; send back an id the broker gave you, or none.",
        ) from exc
    return value


def authorize_reader(request: web.Request) -> tuple[BrokerContext, str, str | None]:
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "read")
    after = resume_position(request)
    if ctx.draining:
        raise ApiError(503, "shutting_down", "This broker is shutting down; reconnect to another.")
    metrics.count_reader(request, after)
    return ctx, channel_id, after


def socket_of(request: web.Request) -> Socket:
    """The socket of a reader whose stream has started. The connection closes when the stream
    ends (readers reconnect anyway), so aiohttp's keep-alive timer, which would sit in the
    loop for an hour per idle reader, is dropped now."""
    socket = as_socket(request.transport)
    if socket is None:  # the connection is already gone
        raise ConnectionResetError("the reader's connection closed")
    request.protocol.keep_alive(False)
    return socket


def gone(channel_id: str) -> ApiError:
    return ApiError(410, "channel_gone", f"Channel {channel_id} has expired or was deleted.")


@dataclass(slots=True)
class Reading:
    """A subscribed reader with its first backlog page already fetched."""

    ctx: BrokerContext
    channel_id: str
    subscriber: Subscriber
    first: ReadResult

    @property
    def gap(self) -> str | None:
        return self.first.gap

    @property
    def nothing_left(self) -> bool:
        """The channel has ended and the reader has already seen its last event."""
        return self.first.ended and not self.first.events

    async def backlog(self) -> AsyncIterator[list[Event]]:
        """Stored events after the reader's position, page by page, recorded as handed over.
        The next page is read only when the consumer asks for it (after writing this one)."""
        page = self.first
        while True:
            for event in page.events:
                self.subscriber.seen(event)
            if page.events:
                yield page.events
            if not page.more or not page.events:
                return
            try:
                page = await read_bounded(self.ctx, self.channel_id, page.events[-1].id)
            except ChannelNotFound as exc:
                raise gone(self.channel_id) from exc

    async def close(self) -> None:
        await self.ctx.hub.unsubscribe(self.subscriber)
        log.debug(
            "reader disconnected (%s)",
            self.subscriber.closed or "done",
            extra={"channel": self.channel_id, "transport": self.subscriber.transport},
        )


async def start_reading(
    ctx: BrokerContext,
    channel_id: str,
    after: str | None,
    transport: Transport,
    *,
    terminal_only: bool = False,
) -> Reading:
    subscriber = await ctx.hub.subscribe(channel_id, transport, terminal_only=terminal_only)
    if after is not None:
        # The reader has everything up to `after`: live delivery must not hand it anything at or
        # below it either. (It can: after a Redis reconnect the live feed catches up from the
        # last id it delivered, which may be older than a reader who joined meanwhile.)
        subscriber.last_key = parse_event_id(after)
    try:
        # A reader arriving at a channel whose writer died learns it now, not at the next tick.
        await ctx.engine.expire_writers([channel_id])
        if terminal_only:
            first = await _terminal_position(ctx, channel_id, after, subscriber)
        else:
            first = await read_bounded(ctx, channel_id, after)
    except ChannelNotFound as exc:
        await ctx.hub.unsubscribe(subscriber)
        raise gone(channel_id) from exc
    except BaseException:
        await ctx.hub.unsubscribe(subscriber)
        raise
    log.debug("reader connected", extra={"channel": channel_id, "transport": transport})
    return Reading(ctx, channel_id, subscriber, first)


async def read_bounded(
    ctx: BrokerContext,
    channel_id: str,
    after: str | None,
    max_events: int = PAGE_SIZE,
    max_bytes: int = PAGE_BYTES,
) -> ReadResult:
    """Up to `max_events` events after `after`, stopping once about `max_bytes` stored bytes are
    read (at least one event). Reads in steps sized by what the events read so far weigh, so a
    page of big messages is never fetched whole. Raises ChannelNotFound."""
    events: list[Event] = []
    size = 0
    count = min(max_events, FIRST_COUNT)
    position = after
    first: ReadResult | None = None
    while True:
        page = await ctx.engine.read(channel_id, position, count)
        first = first or page
        events += page.events
        size += sum(len(event.payload) for event in page.events)
        if not page.more or not page.events or len(events) >= max_events or size >= max_bytes:
            return ReadResult(
                events=events,
                gap=first.gap,
                ended=page.ended,
                last_event_id=page.last_event_id,
                more=page.more,
            )
        position = events[-1].id
        average = max(1, size // len(events))
        count = max(1, min(max_events - len(events), (max_bytes - size) // average))


def _slices(events: list[Event]) -> list[list[Event]]:
    """`events` cut into runs of about SLICE_BYTES (each at least one event)."""
    slices: list[list[Event]] = [[]]
    size = 0
    for event in events:
        if slices[-1] and size + len(event.payload) > SLICE_BYTES:
            slices.append([])
            size = 0
        slices[-1].append(event)
        size += len(event.payload)
    return slices


def heartbeat_header(ctx: BrokerContext) -> dict[str, str]:
    """`Unbroken-Heartbeat: <s>` on streaming answers: a client's watchdog can then be as tight
    as this broker's heartbeat instead of assuming the default 15 s."""
    return {"Unbroken-Heartbeat": f"{ctx.settings.heartbeat:g}"}


async def _terminal_position(
    ctx: BrokerContext, channel_id: str, after: str | None, subscriber: Subscriber
) -> ReadResult:
    """Where a terminal-only reader starts: at the channel's current end, never replaying
    messages. A channel that has already ended gives its terminal event, unless the reader's
    resume id shows it has that one (then nothing is left: 204, which stops EventSource)."""
    info = await ctx.engine.info(channel_id)
    if info is None:
        raise ChannelNotFound(channel_id)
    last = info.last_event_id
    if info.state == "open" or last is None:
        if last is not None:
            subscriber.last_key = parse_event_id(last)  # only what comes after now
        return ReadResult(events=[], gap=None, ended=False, last_event_id=last)
    if after is not None and parse_event_id(after) >= parse_event_id(last):
        return ReadResult(events=[], gap=None, ended=True, last_event_id=last)
    page = await ctx.engine.read(channel_id, id_before(last), 1)
    return ReadResult(events=page.events, gap=None, ended=True, last_event_id=last)


async def forward(reading: Reading, framer: Framer, duration: float | None) -> None:
    """The one loop every streaming transport runs: the backlog, then live events until a
    terminal event, a Closed (reconnect) or `duration` seconds.

    While the handler waits here, the hub writes live events and heartbeats straight to the
    socket through `framer`'s socket bytes; the handler itself only writes what was queued
    (a reader that fell behind, or a terminal event).
    """
    hub = reading.ctx.hub
    await framer.start(reading.gap)
    framer.started()
    subscriber = reading.subscriber
    # From here the hub watches the socket: one whose unsent bytes do not move for the stall
    # timeout is aborted, which makes the write this handler waits on (a replay slice, queued
    # events, the goodbye) raise. Direct writes wait until the handler parks in next_batch().
    subscriber.attach(framer)
    async for page in reading.backlog():
        for part in _slices(page):
            await framer.events(part)  # each slice waits for the socket to drain
        if page[-1].terminal:
            await framer.end(page[-1])
            return
    reading.first = _DONE  # the first page is sent; do not hold it for the connection's life
    subscriber.beat = hub.beat
    deadline = None if duration is None else time.monotonic() + duration
    while True:
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            batch = await subscriber.next_batch(wait)
        except Closed as closed:
            await framer.reconnect(closed.reason)
            return
        if batch:
            await framer.events(batch)
            subscriber.beat = hub.beat
            if batch[-1].terminal:
                await framer.end(batch[-1])
                return
        elif deadline is not None and time.monotonic() >= deadline:
            await framer.reconnect("max_duration")
            return


_DONE = ReadResult(events=[], gap=None, ended=False)
