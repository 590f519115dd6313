"""The Redis engine: channels on Redis Streams, live delivery over one pub/sub connection.

Storage (see docs/redis-layout.md and redis_layout.py): one stream + one meta hash + one writers
hash per channel, written by Lua scripts so that an append is atomic and any number of broker
processes and workers can share one Redis.

Live delivery: every append publishes its new entries on the channel's `:live` pub/sub channel.
Each broker process holds ONE pub/sub connection, subscribed to the channels that have local
subscribers, read by ONE task. Pub/sub is fire-and-forget, so the task remembers the last id it
delivered per channel; after a dropped connection it re-subscribes and reads what it missed from
the stream (XRANGE), so a reconnect loses and duplicates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.engine.base import (
    AppendResult,
    ChannelExists,
    ChannelInfo,
    ChannelNotFound,
    Deliver,
    Engine,
    Limits,
    ReadResult,
)
from broker.engine.redis_layout import (
    DEFAULT_PREFIX,
    channel_keys,
    create_channel,
    delete_channel,
    index_key,
    now_ms,
    run_append,
)
from broker.events import Event, EventType, parse_event_id

log = logging.getLogger(__name__)

# A silent pub/sub connection is pinged after this many seconds and dropped when the PONG does
# not come within as long again: a half-open TCP connection would otherwise stall delivery.
HEALTH_INTERVAL = 15.0
RECONNECT_MIN = 0.05  # seconds; doubled per failed attempt up to RECONNECT_MAX
RECONNECT_MAX = 5.0
POOL_TIMEOUT = 10.0  # seconds a command waits for a free pooled connection before failing
CATCH_UP_PAGE = 1000  # entries per XRANGE when catching up after a reconnect

_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _meta_dict(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


@dataclass(slots=True)
class _Watch:
    """Live-delivery state of one watched channel."""

    live: bytes
    # Where a catch-up starts when nothing was delivered yet: the channel's last id read before
    # subscribing (events up to it are the replay's business, not the relay's).
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


class RedisEngine(Engine):
    name = "redis"

    def __init__(
        self,
        limits: Limits,
        url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        client: Redis | None = None,
        max_connections: int = 64,
    ) -> None:
        """Connect to `url`, or use `client` (its owner closes it; it must return bytes).

        `max_connections` bounds the command pool; the pub/sub connection comes on top.
        """
        super().__init__(limits)
        if client is None:
            if url is None:
                raise ValueError("RedisEngine needs a url or a client")
            # A burst of requests waits for a free connection instead of failing with "Too many
            # connections" (what redis-py's default pool does past 100). Payloads are msgpack:
            # replies must stay bytes.
            pool = BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=POOL_TIMEOUT, decode_responses=False
            )
            self._redis: Redis = Redis.from_pool(pool)
            self._owns_client = True
        else:
            self._redis = client
            self._owns_client = False
        if self._redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        self.prefix = prefix
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

    @property
    def redis(self) -> Redis:
        return self._redis

    async def start(self, deliver: Deliver) -> None:
        await super().start(deliver)
        # Fail at startup on a wrong URL rather than on the first request.
        await self._redis.ping()
        self._reader = asyncio.create_task(self._relay_forever(), name="redis-engine-relay")

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
        if self._owns_client:
            await self._redis.aclose()

    # -- storage --------------------------------------------------------------------------

    async def create(self, channel_id: str) -> ChannelInfo:
        now = now_ms()
        if not await create_channel(
            self._redis, self.prefix, channel_id, self.limits, created_at=now
        ):
            raise ChannelExists(channel_id)
        return ChannelInfo(
            id=channel_id,
            state="open",
            created_at=now,
            updated_at=now,
            messages=0,
            last_event_id=None,
            ttl=self.limits.idle_ttl,
        )

    async def _append(
        self,
        channel_id: str,
        items: Sequence[tuple[EventType, bytes]],
        *,
        writer: str | None,
        seq: int | None,
    ) -> AppendResult:
        # Delivery to local watchers goes through pub/sub like everybody else's writes, so the
        # relay has a single source of order.
        return await run_append(self._redis, self.prefix, channel_id, items, writer=writer, seq=seq)

    async def read(self, channel_id: str, after: str | None, count: int) -> ReadResult:
        after_key = None if after is None else parse_event_id(after)
        keys = channel_keys(self.prefix, channel_id)
        start = "-" if after is None else f"({after}"
        # MULTI/EXEC (one slot) so meta and the page are one consistent snapshot.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.meta, ["state", "last_id", "dropped_until"])
            pipe.xrange(keys.events, min=start, max="+", count=count + 1)
            raw_meta, entries = await pipe.execute()
        state, last_id, dropped_until = (None if v is None else _text(v) for v in raw_meta)
        if state is None:
            raise ChannelNotFound(channel_id)
        events = [_entry_event(entry_id, fields) for entry_id, fields in entries[:count]]
        gap = None
        if dropped_until and (after_key is None or after_key < parse_event_id(dropped_until)):
            # Everything retained is newer than dropped_until, so the page starts with the
            # oldest retained event; look it up only for a zero-sized page.
            if events:
                gap = events[0].id
            else:
                first = await self._redis.xrange(keys.events, min="-", max="+", count=1)
                gap = _text(first[0][0]) if first else None
        return ReadResult(
            events=events,
            gap=gap,
            ended=state != "open",
            last_event_id=last_id or None,
            more=len(entries) > count,
        )

    async def info(self, channel_id: str) -> ChannelInfo | None:
        keys = channel_keys(self.prefix, channel_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.meta)
            pipe.pttl(keys.meta)
            raw_meta, pttl = await pipe.execute()
        return _info(channel_id, raw_meta, pttl)

    async def delete(self, channel_id: str) -> bool:
        existed = await delete_channel(self._redis, self.prefix, channel_id)
        watch = self._watched.get(channel_id)
        if existed and watch is not None:
            self._deliver_gone(channel_id, watch)
        return existed

    async def channels(self, limit: int = 1000) -> list[ChannelInfo]:
        index = index_key(self.prefix)
        found: list[ChannelInfo] = []
        start = 0
        while len(found) < limit:
            page = limit - len(found)
            ids = [_text(i) for i in await self._redis.zrevrange(index, start, start + page - 1)]
            if not ids:
                break
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel_id in ids:
                    keys = channel_keys(self.prefix, channel_id)
                    pipe.hgetall(keys.meta)
                    pipe.pttl(keys.meta)
                replies = await pipe.execute()
            stale = []
            for n, channel_id in enumerate(ids):
                info = _info(channel_id, replies[2 * n], replies[2 * n + 1])
                if info is None:
                    stale.append(channel_id)
                else:
                    found.append(info)
            if stale:
                await self._redis.zrem(index, *stale)
            start += len(ids) - len(stale)
        found.sort(key=lambda c: c.created_at, reverse=True)
        return found

    async def exists_many(self, channel_ids: Sequence[str]) -> list[bool]:
        if not channel_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel_id in channel_ids:
                pipe.exists(channel_keys(self.prefix, channel_id).meta)
            return [bool(n) for n in await pipe.execute()]

    # -- live delivery --------------------------------------------------------------------

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
        # While disconnected, the relay task subscribes every watched channel when it is back.
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

    async def _send(self, kind: bytes, watch: _Watch) -> None:
        async with self._send_lock:
            conn = self._conn
            # send_command() would silently open a new connection, without our subscriptions.
            if conn is None or not conn.is_connected:
                return
            self._pending.append((kind, watch.live, watch))
            try:
                await conn.send_command(kind.upper(), watch.live, check_health=False)
            except _CONNECTION_ERRORS:
                # The relay task notices the broken connection too, and re-subscribes what is
                # watched by then.
                log.debug("pub/sub send failed; the relay task reconnects")

    async def _relay_forever(self) -> None:
        delay = RECONNECT_MIN
        while not self._closing:
            conn = self._new_pubsub_connection()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                delay = RECONNECT_MIN  # Redis is reachable: the next drop retries at once
                await self._relay(conn)
            except asyncio.CancelledError:
                raise
            except _CONNECTION_ERRORS as exc:
                log.warning("redis pub/sub connection: %s; retrying in %.2fs", exc, delay)
            except Exception:
                log.exception("redis relay failed; reconnecting in %.2fs", delay)
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

    async def _relay(self, conn: AbstractConnection) -> None:
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
                events = [_entry_event(entry_id, fields) for entry_id, fields in entries]
                self.caught_up += self._deliver_events(channel_id, watch, events)
                if len(entries) == CATCH_UP_PAGE:
                    again.append((channel_id, watch, events[-1].id))
            todo = again


def _entry_event(entry_id: Any, fields: dict[Any, Any]) -> Event:
    kind = fields.get(b"type", fields.get("type", b"message"))
    data = fields.get(b"data", fields.get("data", b"\xc0"))
    return Event(_text(entry_id), cast(EventType, _text(kind)), data)


def _info(channel_id: str, raw_meta: dict[Any, Any], pttl: int) -> ChannelInfo | None:
    if not raw_meta:
        return None
    meta = _meta_dict(raw_meta)
    return ChannelInfo(
        id=channel_id,
        state=meta.get("state", "open"),
        created_at=int(meta.get("created_at", 0)),
        updated_at=int(meta.get("updated_at", 0)),
        messages=int(meta.get("count", 0)),
        last_event_id=meta.get("last_id") or None,
        ttl=-1 if pttl < 0 else math.floor(pttl / 1000),
    )
