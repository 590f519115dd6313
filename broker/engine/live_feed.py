"""The live feed: new entries of watched channels, read from Redis pub/sub, handed to the hub.

Every append publishes its new entries on the channel's `:live` pub/sub channel (see
docs/redis-layout.md). A broker process holds ONE pub/sub connection, subscribed to the channels
that have local readers, read by ONE task. Pub/sub is fire-and-forget, so the feed remembers the
last id it delivered per channel; after a dropped connection it re-subscribes and reads what it
missed from the streams (XRANGE), so a reconnect loses and duplicates nothing.

Names: the *feed* reads Redis; the hub *fans out* what the feed delivers to its subscribers; a
transport *streams* a subscriber's events to its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.engine.base import Deliver
from broker.engine.redis_layout import channel_keys, entry_event
from broker.events import Event, EventType

log = logging.getLogger(__name__)

# A pub/sub connection silent for this many seconds is pinged, and dropped when nothing comes
# back within as long again: a frozen Redis or a half-open TCP connection is noticed within
# 2 x HEALTH_INTERVAL, and the feed reconnects and catches up from the streams.
HEALTH_INTERVAL = 2.0
RECONNECT_MIN = 0.05  # seconds; doubled per failed attempt up to RECONNECT_MAX
RECONNECT_MAX = 2.0
CATCH_UP_PAGE = 1000  # entries per XRANGE when catching up after a reconnect

CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class _Watch:
    """Live-delivery state of one watched channel."""

    live: bytes
    # Where a catch-up starts when nothing was delivered yet: the channel's last id read before
    # subscribing (events up to it are the replay's business, not the feed's).
    floor: str | None
    # Whether the channel was seen to exist: a catch-up that finds no channel reports it gone
    # only then (watching a channel about to be created is allowed).
    existed: bool
    last_id: str | None = None  # last delivered
    last_key: tuple[int, int] = (-1, -1)
    confirmed: bool = False
    # deliver(None) was called and no event came since: a deletion is told once, although a
    # local delete() both calls deliver(None) and publishes the notice every process receives.
    gone: bool = False
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def wake(self) -> None:
        self.confirmed = True
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class LiveFeed:
    """Delivers the new entries of watched channels, in order, once each."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self.prefix = prefix
        self._deliver: Deliver | None = None
        self._watched: dict[str, _Watch] = {}
        self._by_live: dict[bytes, str] = {}
        self._conn: AbstractConnection | None = None  # the pub/sub connection, once subscribed
        # (kind, live name, watch) per SUBSCRIBE/UNSUBSCRIBE channel sent on _conn: Redis confirms
        # them in order, so the head of this queue is what the next confirmation is about.
        self._pending: deque[tuple[bytes, bytes, _Watch | None]] = deque()
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        # Events read from pub/sub, handed to `deliver` once the read buffer is drained.
        self._queued: dict[str, tuple[_Watch, list[Event]]] = {}
        self._flush_scheduled = False
        self._closing = False
        self.reconnects = 0  # pub/sub reconnections (for metrics and tests)
        self.caught_up = 0  # events delivered from the streams after a reconnect

    def stats(self) -> dict[str, int]:
        return {
            "feed_reconnects": self.reconnects,
            "feed_caught_up": self.caught_up,
            "feed_connections": int(self._conn is not None),
        }

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._reader = asyncio.create_task(self._read_forever(), name="redis-live-feed")

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for watch in self._watched.values():
            for waiter in watch.waiters:
                if not waiter.done():
                    waiter.set_exception(RedisConnectionError("engine closed"))
            watch.waiters.clear()

    async def watch(self, channel_id: str) -> None:
        watch = self._watched.get(channel_id)
        if watch is None:
            keys = channel_keys(self.prefix, channel_id)
            state, floor = await self._redis.hmget(keys.meta, ["state", "last_id"])
            watch = self._watched.get(channel_id)  # another watch() may have won meanwhile
            if watch is None:
                watch = _Watch(
                    live=keys.live.encode(),
                    floor=_text(floor) if floor else None,
                    existed=state is not None,
                )
                self._watched[channel_id] = watch
                self._by_live[watch.live] = channel_id
        if watch.confirmed:
            return
        waiter = asyncio.get_running_loop().create_future()
        watch.waiters.append(waiter)
        # While disconnected, the reader task subscribes every watched channel when it is back.
        await self._send(b"subscribe", watch)
        try:
            await waiter
        finally:
            if waiter in watch.waiters:  # cancelled: nothing will resolve it any more
                watch.waiters.remove(waiter)

    async def unwatch(self, channel_id: str) -> None:
        watch = self._watched.pop(channel_id, None)
        if watch is None:
            return
        self._by_live.pop(watch.live, None)
        watch.wake()  # a watch() still waiting returns; the channel is simply not delivered
        await self._send(b"unsubscribe", watch)

    def deleted(self, channel_id: str) -> None:
        """This process deleted the channel: tell its watchers now, not when the notice comes."""
        watch = self._watched.get(channel_id)
        if watch is not None:
            self._deliver_gone(channel_id, watch)

    async def _send(self, kind: bytes, watch: _Watch) -> None:
        async with self._send_lock:
            conn = self._conn
            # send_command() would silently open a new connection, without our subscriptions.
            if conn is None or not conn.is_connected:
                return
            self._pending.append((kind, watch.live, watch))
            try:
                await conn.send_command(kind.upper(), watch.live, check_health=False)
            except CONNECTION_ERRORS:
                # The reader task notices the broken connection too, and re-subscribes what is
                # watched by then.
                log.debug("pub/sub send failed; the feed reconnects")

    async def _read_forever(self) -> None:
        delay = RECONNECT_MIN
        while not self._closing:
            conn = self._new_pubsub_connection()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                delay = RECONNECT_MIN  # Redis is reachable: the next drop retries at once
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                log.warning("redis pub/sub connection: %s; retrying in %.2fs", exc, delay)
            except Exception:
                log.exception("redis live feed failed; reconnecting in %.2fs", delay)
            finally:
                async with self._send_lock:
                    self._conn = None
                    self._pending.clear()
                for watch in self._watched.values():
                    watch.confirmed = False
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _new_pubsub_connection(self) -> AbstractConnection:
        pool = self._redis.connection_pool
        # RESP2, whatever the client negotiates: pub/sub messages are then plain replies that
        # read_response() returns, where RESP3 would route them to redis-py's push handlers.
        kwargs = {**pool.connection_kwargs, "protocol": 2}
        conn: AbstractConnection = pool.connection_class(**kwargs)
        return conn

    async def _read(self, conn: AbstractConnection) -> None:
        # Subscribe everything watched, in one command, before watch() may send on this
        # connection (the lock keeps the confirmations in the order of the _pending queue).
        async with self._send_lock:
            batch = list(self._watched.values())
            for watch in batch:
                self._pending.append((b"subscribe", watch.live, watch))
            if batch:
                await conn.send_command("SUBSCRIBE", *[w.live for w in batch], check_health=False)
            self._conn = conn
        # Until the batch is confirmed, new entries are buffered: what was missed while
        # disconnected must be read from the streams first, and only once Redis has subscribed
        # us, or an entry could fall between the two. The first len(batch) confirmations on this
        # connection are the batch's, since it was sent first.
        unconfirmed = len(batch)
        buffered: list[list[Any]] = []
        ping_sent = False
        while True:
            reply = await conn.read_response(disable_decoding=True, timeout=HEALTH_INTERVAL)
            if reply is None:
                if ping_sent or not conn.is_connected:
                    raise RedisTimeoutError("no PONG from redis on the pub/sub connection")
                async with self._send_lock:
                    await conn.send_command("PING", check_health=False)
                ping_sent = True
                continue
            ping_sent = False
            if not isinstance(reply, list):  # b"PONG": fakeredis answers PING like this
                continue
            kind = reply[0]
            if kind == b"message":
                if unconfirmed:
                    buffered.append(reply)
                else:
                    self._on_message(reply[1], reply[2])
            elif kind in (b"subscribe", b"unsubscribe"):
                self._on_confirmation(kind, reply[1])
                if unconfirmed:
                    unconfirmed -= 1
                    if not unconfirmed:
                        await self._catch_up(batch)
                        for message in buffered:
                            self._on_message(message[1], message[2])
                        buffered.clear()

    def _on_confirmation(self, kind: bytes, live: bytes) -> None:
        while self._pending:
            pending_kind, pending_live, watch = self._pending.popleft()
            if pending_kind == kind and pending_live == live:
                if kind == b"subscribe" and watch is not None:
                    watch.wake()
                return
            log.warning("unexpected pub/sub confirmation %r %r", kind, live)

    def _on_message(self, live: bytes, payload: bytes) -> None:
        channel_id = self._by_live.get(live)
        if channel_id is None:
            return  # unwatched meanwhile
        watch = self._watched[channel_id]
        if not watch.confirmed:
            # Published to an earlier subscription of this name (before an unwatch); events of
            # this watch only arrive after its own confirmation.
            return
        try:
            entry_id, kind, data = payload.split(b"\n", 2)
            if kind == b"deleted":
                self._deliver_gone(channel_id, watch)
                return
            event = Event(entry_id.decode(), cast(EventType, kind.decode()), data)
        except ValueError:
            log.warning("ignoring a malformed message on %r", live)
            return
        if event.key <= watch.last_key:
            return
        watch.existed = True
        watch.last_key, watch.last_id = event.key, event.id
        # Replies already in the read buffer are parsed without yielding to the event loop, so
        # a flush scheduled with call_soon hands a whole batch append (or a burst) to the hub
        # in one call per channel.
        queued = self._queued.get(channel_id)
        if queued is not None and queued[0] is not watch:
            self._flush()  # events of an earlier watch of this name; dropped by _flush
            queued = None
        if queued is None:
            self._queued[channel_id] = (watch, [event])
        else:
            queued[1].append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        for channel_id, (watch, events) in queued.items():
            if self._watched.get(channel_id) is watch:
                watch.gone = False  # recreated under the same name, like the memory engine
                self._call_deliver(channel_id, events)

    def _call_deliver(self, channel_id: str, events: Sequence[Event] | None) -> None:
        if self._deliver is None:
            return
        try:
            self._deliver(channel_id, events)
        except Exception:
            log.exception("deliver() failed for channel %s", channel_id)

    def _deliver_events(self, channel_id: str, watch: _Watch, events: Sequence[Event]) -> int:
        """Deliver at once (after what is queued), skipping what was delivered already."""
        fresh = [e for e in events if e.key > watch.last_key]
        if not fresh:
            return 0
        self._flush()
        watch.existed = True
        watch.gone = False
        watch.last_key, watch.last_id = fresh[-1].key, fresh[-1].id
        self._call_deliver(channel_id, fresh)
        return len(fresh)

    def _deliver_gone(self, channel_id: str, watch: _Watch) -> None:
        if watch.gone:
            return
        self._flush()  # events published before the deletion first
        watch.gone = True
        self._call_deliver(channel_id, None)

    async def _catch_up(self, batch: Sequence[_Watch]) -> None:
        """Deliver what was appended to these channels while the pub/sub connection was down.

        One pipeline per round for all channels (not a round trip per channel); channels with
        more than a page missed go another round.
        """
        todo: list[tuple[str, _Watch, str | None]] = []
        for watch in batch:
            channel_id = self._by_live.get(watch.live)
            if channel_id is not None and self._watched.get(channel_id) is watch:
                todo.append((channel_id, watch, watch.last_id or watch.floor))
        while todo:
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel_id, _, start in todo:
                    keys = channel_keys(self.prefix, channel_id)
                    pipe.exists(keys.meta)
                    pipe.xrange(
                        keys.events,
                        min="-" if start is None else f"({start}",
                        max="+",
                        count=CATCH_UP_PAGE,
                    )
                replies = await pipe.execute()
            again: list[tuple[str, _Watch, str | None]] = []
            for n, (channel_id, watch, _) in enumerate(todo):
                exists, entries = replies[2 * n], replies[2 * n + 1]
                if self._watched.get(channel_id) is not watch:
                    continue  # unwatched while we waited
                if not exists:
                    # Deleted or expired while we were not listening (its notice is lost).
                    if watch.existed:
                        self._deliver_gone(channel_id, watch)
                    continue
                events = [entry_event(entry_id, fields) for entry_id, fields in entries]
                self.caught_up += self._deliver_events(channel_id, watch, events)
                if len(entries) == CATCH_UP_PAGE:
                    again.append((channel_id, watch, events[-1].id))
            todo = again
