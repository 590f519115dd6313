"""The fan-out: the engine hands each new event to the hub once; the hub queues that same
object (with its cached encodings) for every local subscriber of the channel.

A subscriber is one connected reader. Its queue is bounded by bytes: a reader whose socket does
not drain is disconnected (it resumes from its last id) instead of growing the broker's memory.
A reader whose socket takes nothing for `stall_timeout` (live or mid-replay) is disconnected too,
by aborting its connection: its handler may be parked on a write that would wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket as sockets
import struct
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, Protocol

from broker.engine.base import Engine
from broker.events import Event
from broker.vocabulary import ReconnectReason, Transport

log = logging.getLogger("unbroken.hub")

# One periodic loop, one timer: every tick ends watched channels whose writer lease ran out;
# every EXISTS_EVERY ticks it also checks that the watched channels still exist.
TICK = 2.0  # seconds
# Reader counts shared with other broker processes (channel status is cluster-wide): changes
# within SHARE_INTERVAL, everything every SHARE_REFRESH, valid SHARE_TTL (a dead broker's share
# then stops counting).
SHARE_INTERVAL = 0.25
SHARE_REFRESH = 10.0
SHARE_TTL = 30.0
EXISTS_EVERY = 15  # ticks (30 s)


class Closed(Exception):
    """The subscriber must stop (broker.vocabulary.ReconnectReason says why)."""

    def __init__(self, reason: ReconnectReason) -> None:
        super().__init__(reason)
        self.reason = reason


class Socket(Protocol):
    """What the hub needs of a transport. Structural, because uvloop's transports are not
    registered as asyncio.WriteTransport subclasses."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def as_socket(transport: object) -> Socket | None:
    if all(
        hasattr(transport, name)
        for name in ("write", "is_closing", "get_write_buffer_size", "abort", "get_extra_info")
    ):
        return transport  # type: ignore[return-value]
    return None


_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, drops unsent bytes


def reset(socket: Socket) -> None:
    """Drop a connection at once, with what it buffered. The handler's pending write raises
    (ConnectionError) so its cleanup runs. Linger 0 makes the kernel send RST and free the
    socket's send buffer too; a plain close would keep trying to deliver it to a peer that
    reads nothing (as an orphan, for minutes)."""
    raw = socket.get_extra_info("socket")
    if raw is not None:
        with contextlib.suppress(OSError):
            raw.setsockopt(sockets.SOL_SOCKET, sockets.SO_LINGER, _RESET)
    socket.abort()


class Direct(Protocol):
    """A reader's framing, as the hub needs it to write to the socket itself (implemented by
    broker.transports.framing.Framer)."""

    @property
    def socket(self) -> Socket: ...

    @property
    def kind(self) -> str: ...

    @property
    def heartbeat(self) -> bytes: ...

    def frame(self, events: Sequence[Event]) -> bytes: ...


class Subscriber:
    """One connected reader.

    Events reach it in one of two ways. While its handler is parked waiting and nothing is
    queued, the hub writes each event's cached, already-framed bytes straight to the socket
    (`attach`): no wake-up, no copy per reader. Otherwise events wait in a queue bounded by
    bytes, and the handler writes them when it runs. Either way the bound is `max_pending`
    bytes not yet taken by the network.

    Kept small (slots, no closures): an idle broker holds one of these per connection.
    """

    __slots__ = (
        "_queue",
        "_waiter",
        "beat",
        "channel_id",
        "closed",
        "direct",
        "last_key",
        "max_pending",
        "pending",
        "stuck",
        "stuck_since",
        "terminal_only",
        "transport",
    )

    def __init__(
        self,
        channel_id: str,
        transport: Transport,
        max_pending: int,
        *,
        terminal_only: bool = False,
    ) -> None:
        self.channel_id = channel_id
        self.transport = transport
        self.max_pending = max_pending
        # A writer waiting for the channel's end (`?only=terminal`): it gets terminal events
        # only, so messages are dropped here, before the direct-write path and the queue.
        self.terminal_only = terminal_only
        self.last_key: tuple[int, int] = (-1, -1)  # newest id handed to this reader
        self.pending = 0  # bytes queued, measured on the SSE encoding
        self.closed: ReconnectReason | None = None
        self.direct: Direct | None = None
        self.beat = 0  # the hub's heartbeat tick of the last write to this reader
        # Stall detection, on the hub's heartbeat ticks: the socket's unsent bytes at the last
        # tick, and the tick since which that number has not moved.
        self.stuck = 0
        self.stuck_since = 0
        # Made on first use: an empty deque is 600 bytes, and most readers never queue.
        self._queue: deque[Event] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def attach(self, direct: Direct) -> None:
        """Allow direct writes (events, heartbeats) while the handler is parked in next_batch(),
        and watch the socket for stalls (from the stream's start: replay included)."""
        self.direct = direct

    @property
    def parked(self) -> bool:
        """The handler waits and nothing is queued: the hub may write to the socket itself."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._queue

    def push(self, events: Sequence[Event]) -> None:
        """Queue events for the handler (the hub writes parked readers' events itself)."""
        if self.closed is not None:
            return
        if self.terminal_only:
            events = [event for event in events if event.terminal]
            if not events:
                return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        for event in events:
            queue.append(event)
            self.pending += len(event.sse)
        if self.pending > self.max_pending:
            self.close("slow_consumer")
        else:
            self._wake()

    def close(self, reason: ReconnectReason) -> None:
        if self.closed is None:
            self.closed = reason
            self._queue = None
            self.pending = 0
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def seen(self, event: Event) -> None:
        """Record an event handed over outside the queue (during replay)."""
        if event.key > self.last_key:
            self.last_key = event.key

    def take(self, limit: int = 10_000) -> list[Event]:
        """Queued events not yet handed over, oldest first (replay overlap is dropped here)."""
        if self.closed is not None:
            raise Closed(self.closed)
        batch: list[Event] = []
        queue = self._queue
        if not queue:
            return batch
        while queue and len(batch) < limit:
            event = queue.popleft()
            self.pending -= len(event.sse)
            if event.key > self.last_key:
                self.last_key = event.key
                batch.append(event)
        return batch

    async def next_batch(self, timeout: float | None) -> list[Event]:
        """Wait for new events; [] when `timeout` passed first. Raises Closed.

        While waiting, events and heartbeats may also be written straight to the socket (see
        attach); those are not returned here.
        """
        batch = self.take()
        if batch:
            return batch
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await self._waiter
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._waiter
        finally:
            self._waiter = None
        return self.take()


class Hub:
    def __init__(
        self,
        engine: Engine,
        max_pending: int,
        heartbeat: float = 15.0,
        stall_timeout: float = 30.0,
    ) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self.heartbeat = heartbeat
        # Checked on the heartbeat ticks (heartbeat / 2 apart): a stalled reader is dropped
        # between stall_timeout and stall_timeout + heartbeat / 2 after its socket last took
        # anything.
        self.stall_ticks = max(1, math.ceil(stall_timeout / (heartbeat / 2)))
        self._channels: dict[str, set[Subscriber]] = {}
        self._watch_lock = asyncio.Lock()
        self._expiry_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._share_task: asyncio.Task[None] | None = None
        self._changed: set[str] = set()  # channels whose reader count changed since shared
        # Sockets of finished readers until their connections are closed. The close waits
        # until the last bytes (the end event, the end of the body, a goodbye) are sent, so a
        # peer that reads nothing would hold the connection forever. Watched by the stall
        # check like a reader's: socket -> (unsent bytes, tick since unchanged).
        self._lingering: dict[Socket, tuple[int, int]] = {}
        self.beat = 0  # heartbeat ticks so far (one per heartbeat / 2 seconds)
        self.delivered = 0  # events handed to subscribers (for metrics)
        self.slow_consumers = 0
        self.relayed: Counter[str] = Counter()  # events from the engine, once each, by type

    async def start(self) -> None:
        await self.engine.start(self.deliver)
        self._expiry_task = asyncio.create_task(self._tick_forever(), name="hub-expiry")
        self._beat_task = asyncio.create_task(self._beat_forever(), name="hub-heartbeat")
        self._share_task = asyncio.create_task(self._share_forever(), name="hub-share-readers")

    def all_subscribers(self) -> list[Subscriber]:
        return [s for group in self._channels.values() for s in group]

    async def close(self, reason: ReconnectReason = "shutdown") -> None:
        for subscriber in self.all_subscribers():
            subscriber.close(reason)
        for task in (self._expiry_task, self._beat_task, self._share_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # This process's readers are gone: say so now rather than when the share expires.
        gone: dict[str, dict[str, int]] = {c: {} for c in (*self._channels, *self._changed)}
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.engine.share_readers(gone, SHARE_TTL)
        await self.engine.close()

    def deliver(self, channel_id: str, events: Sequence[Event] | None) -> None:
        subscribers = self._channels.get(channel_id)
        if not subscribers:
            return
        if events is None:
            for subscriber in tuple(subscribers):
                subscriber.close("gone")
            return
        self.delivered += len(events) * len(subscribers)
        relayed = self.relayed
        for event in events:
            relayed[event.type] += 1
        # The hot path, inlined on purpose (it runs once per event per reader): a parked
        # reader gets the batch's bytes, framed once per framing for all readers, in one write.
        # Terminal events take the queue: the handler writes them itself and then closes.
        direct = not events[-1].terminal
        first_key, last_key = events[0].key, events[-1].key
        frames: dict[str, bytes] = {}
        beat = self.beat
        for subscriber in tuple(subscribers):
            if subscriber.closed is not None:
                continue
            framer = subscriber.direct
            waiter = subscriber._waiter
            if (
                not direct
                or framer is None
                or waiter is None
                or waiter.done()
                or subscriber._queue
                or subscriber.terminal_only
                or first_key <= subscriber.last_key  # only after a replay overlap: rare
            ):
                subscriber.push(events)
            else:
                socket = framer.socket
                if socket.is_closing():
                    subscriber.close("client_closed")
                    continue
                if socket.get_write_buffer_size() > subscriber.max_pending:
                    self.drop(subscriber, socket)
                    continue
                data = frames.get(framer.kind)
                if data is None:
                    data = frames[framer.kind] = framer.frame(events)
                socket.write(data)
                subscriber.last_key = last_key
                subscriber.beat = beat
                continue
            if subscriber.closed == "slow_consumer":  # its queue overflowed
                self.slow_consumers += 1
                if framer is not None and framer.socket.get_write_buffer_size() > self.max_pending:
                    self.drop(subscriber, framer.socket)  # already closed: aborts only

    async def subscribe(
        self, channel_id: str, transport: Transport, *, terminal_only: bool = False
    ) -> Subscriber:
        """Register a reader. Events appended after this returns reach its queue."""
        subscriber = Subscriber(
            channel_id, transport, self.max_pending, terminal_only=terminal_only
        )
        subscribers = self._channels.get(channel_id)
        if subscribers is None:
            # A channel is in _channels only once the engine confirmed it is watched; watch and
            # unwatch transitions are serialized so they cannot interleave.
            async with self._watch_lock:
                subscribers = self._channels.get(channel_id)
                if subscribers is None:
                    await self.engine.watch(channel_id)
                    subscribers = self._channels[channel_id] = set()
        subscribers.add(subscriber)
        self._changed.add(channel_id)
        return subscriber

    async def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber.direct is not None and not subscriber.direct.socket.is_closing():
            self._lingering[subscriber.direct.socket] = (-1, self.beat)
        channel_id = subscriber.channel_id
        subscribers = self._channels.get(channel_id)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        self._changed.add(channel_id)
        if subscribers:
            return
        async with self._watch_lock:
            if self._channels.get(channel_id) is subscribers and not subscribers:
                del self._channels[channel_id]
                await self.engine.unwatch(channel_id)

    async def _share_forever(self) -> None:
        """Tell the engine (other broker processes) how many readers each channel has here."""
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(SHARE_INTERVAL)
            changed, self._changed = self._changed, set()
            if time.monotonic() - refreshed >= SHARE_REFRESH:
                refreshed = time.monotonic()
                changed.update(self._channels)
            if not changed:
                continue
            try:
                await self.engine.share_readers(
                    {channel_id: self.counts(channel_id) for channel_id in changed}, SHARE_TTL
                )
            except Exception:  # shared again at the next interval
                log.warning("could not share reader counts", exc_info=True)
                self._changed |= changed

    def counts(self, channel_id: str | None = None) -> Counter[str]:
        """Subscribers by transport, for one channel or all."""
        groups = (
            [self._channels.get(channel_id, set())]
            if channel_id is not None
            else list(self._channels.values())
        )
        return Counter(s.transport for group in groups for s in group)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    async def _tick_forever(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            ticks += 1
            channel_ids = list(self._channels)
            if not channel_ids:
                continue
            try:
                # Ended channels come back through the engine's delivery, like any event.
                await self.engine.expire_writers(channel_ids)
            except Exception:  # retried at the next tick
                log.warning("could not check writer leases", exc_info=True)
            if ticks % EXISTS_EVERY == 0:
                await self._check_exists(channel_ids)

    async def _check_exists(self, channel_ids: list[str]) -> None:
        try:
            alive = await self.engine.exists_many(channel_ids)
        except Exception:  # a failed check is retried at the next interval
            log.warning("could not check channel expiry", exc_info=True)
            return
        for channel_id, exists in zip(channel_ids, alive, strict=True):
            if not exists:
                self.deliver(channel_id, None)

    def drop(self, subscriber: Subscriber, socket: Socket) -> None:
        """Disconnect a reader that does not keep up, aborting its connection: its reconnect
        notice would wait behind what its socket already holds, and its handler with it, maybe
        forever. It resumes from its last id."""
        if subscriber.closed is None:
            subscriber.close("slow_consumer")
            self.slow_consumers += 1
        reset(socket)
        log.info(
            "reader not reading; disconnected (slow_consumer)",
            extra={"channel": subscriber.channel_id, "transport": subscriber.transport},
        )

    async def _beat_forever(self) -> None:
        """Heartbeats and stall checks for every streaming reader, from one timer.

        Each tick writes the framing's pre-framed heartbeat to parked readers that got nothing
        since the tick before last, so a reader hears something at least every `heartbeat`
        seconds (ticks are heartbeat / 2 apart). And it drops readers whose socket took nothing
        for `stall_ticks` ticks: unsent bytes that have not moved (parked or not, closed or
        not: a handler blocked on a write, in replay or sending its goodbye, is released too).
        """
        period = self.heartbeat / 2
        while True:
            await asyncio.sleep(period)
            self.beat += 1
            stale = self.beat - 2
            for group in tuple(self._channels.values()):
                for subscriber in tuple(group):
                    framer = subscriber.direct
                    if framer is None:
                        continue  # not streaming (yet): its handler writes, and times out
                    socket = framer.socket
                    unsent = socket.get_write_buffer_size()
                    if unsent == 0 or unsent != subscriber.stuck:
                        subscriber.stuck_since = self.beat
                    elif self.beat - subscriber.stuck_since >= self.stall_ticks:
                        self.drop(subscriber, socket)
                        continue
                    subscriber.stuck = unsent
                    if subscriber.beat > stale or not subscriber.parked:
                        continue
                    if socket.is_closing():
                        subscriber.close("client_closed")
                    elif unsent > subscriber.max_pending:
                        self.drop(subscriber, socket)
                    else:
                        socket.write(framer.heartbeat)
                        subscriber.beat = self.beat
                        # Our own heartbeat is not progress: the next tick compares with this.
                        subscriber.stuck = socket.get_write_buffer_size()
            self._check_lingering()

    def _check_lingering(self) -> None:
        for socket, (before, since) in tuple(self._lingering.items()):
            unsent = socket.get_write_buffer_size()
            if unsent == 0 and socket.is_closing():  # all sent and closed
                del self._lingering[socket]
            elif unsent != before:
                self._lingering[socket] = (unsent, self.beat)
            elif self.beat - since >= self.stall_ticks:
                del self._lingering[socket]
                if unsent:
                    reset(socket)
                    log.info("finished reader not reading; connection reset")
