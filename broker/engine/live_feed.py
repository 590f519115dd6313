"""The live feed: new entries of watched channels, read from Redis pub/sub, handed to the hub.

Every append publishes its new entries on the channel's `:live` pub/sub channel (see
docs/redis-layout.md): with SPUBLISH on Redis >= 7 (sharded pub/sub), else PUBLISH. A broker
process holds ONE pub/sub connection per shard (one for a single server or a Sentinel-managed
primary; one per Cluster primary that owns a watched channel's slot), subscribed to the channels
that have local readers, each read by ONE task: the cost does not grow with readers or channels.

Pub/sub is fire-and-forget, so the feed remembers the last id it delivered per channel; after a
dropped connection, a failover or a slot that moved, it re-reads the slot map, re-subscribes on
the right node and reads what it missed from the streams (XRANGE), so nothing is lost or
duplicated. Each connection is pinged after HEALTH_INTERVAL idle seconds and dropped when the
answer does not come within as long again.

Names: the *feed* reads Redis; the hub *fans out* what the feed delivers to its subscribers; a
transport *streams* a subscriber's events to its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.engine.base import Deliver
from broker.engine.redis_client import is_cluster, retrying
from broker.engine.redis_layout import Client, channel_keys, entry_event, sharded_pubsub
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
    link: _Link | None = None  # the connection it is (being) subscribed on
    # Read the stream from last_id/floor once subscribed: entries may have been missed (it was
    # subscribed elsewhere before, or the connection dropped).
    catch_up: bool = False
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


class _Route:
    """Which node a live channel's subscription goes to, and connections to it."""

    def __init__(self, client: Client, sharded: bool) -> None:
        self.client = client
        self.sharded = sharded

    def node_for(self, live: bytes) -> str:
        if not is_cluster(self.client):
            return ""  # the one server (for Sentinel: whichever is the primary when connecting)
        manager = self.client.nodes_manager  # type: ignore[union-attr]
        if not self.sharded:
            # Classic PUBLISH reaches every node of a Cluster: any primary will do.
            return str(manager.get_nodes_by_server_type("primary")[0].name)
        return str(manager.get_node_from_slot(key_slot(live)).name)

    def connection(self, node: str) -> AbstractConnection:
        if is_cluster(self.client):
            cluster_node = self.client.get_node(node_name=node)  # type: ignore[union-attr]
            if cluster_node is None:
                raise RedisConnectionError(f"node {node} left the cluster")
            connection_class, kwargs = cluster_node.connection_class, cluster_node.connection_kwargs
        else:
            pool = self.client.connection_pool  # type: ignore[union-attr]
            connection_class, kwargs = pool.connection_class, pool.connection_kwargs
        # RESP2, whatever the client negotiates: pub/sub messages are then plain replies that
        # read_response() returns, where RESP3 would route them to redis-py's push handlers.
        conn: AbstractConnection = connection_class(**{**kwargs, "protocol": 2})
        return conn

    async def refresh(self) -> None:
        """Re-read the slot map (after a failover or a moved slot)."""
        if is_cluster(self.client):
            await self.client.nodes_manager.initialize()  # type: ignore[union-attr]


class LiveFeed:
    """Delivers the new entries of watched channels, in order, once each."""

    def __init__(self, redis: Client, prefix: str) -> None:
        self._redis = redis
        self.prefix = prefix
        self._deliver: Deliver | None = None
        self._route = _Route(redis, sharded=False)
        self._watched: dict[str, _Watch] = {}
        self._by_live: dict[bytes, str] = {}
        self._links: dict[str, _Link] = {}  # node name -> its connection
        # Set while the feed waits (backoff) to re-read the slot map and re-attach channels
        # whose connection broke; watch() then leaves attaching to it.
        self._reroute: asyncio.Task[None] | None = None
        self._delay = RECONNECT_MIN
        # Events read from pub/sub, handed to `deliver` once the read buffer is drained.
        self._queued: dict[str, tuple[_Watch, list[Event]]] = {}
        self._flush_scheduled = False
        self._closing = False
        self.reconnects = 0  # pub/sub connections lost (for metrics and tests)
        self.caught_up = 0  # events delivered from the streams after a reconnect

    @property
    def sharded(self) -> bool:
        """SSUBSCRIBE (Redis >= 7) rather than SUBSCRIBE."""
        return self._route.sharded

    def stats(self) -> dict[str, int]:
        return {
            "feed_reconnects": self.reconnects,
            "feed_caught_up": self.caught_up,
            "feed_connections": sum(1 for link in self._links.values() if link.conn is not None),
        }

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        # Once, at start: the scripts make the same choice server-side (redis_layout.PRELUDE).
        self._route.sharded = await sharded_pubsub(self._redis)

    async def close(self) -> None:
        self._closing = True
        tasks = [link.task for link in self._links.values()]
        if self._reroute is not None:
            tasks.append(self._reroute)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._links.clear()
        for watch in self._watched.values():
            for waiter in watch.waiters:
                if not waiter.done():
                    waiter.set_exception(RedisConnectionError("engine closed"))
            watch.waiters.clear()

    async def watch(self, channel_id: str) -> None:
        watch = self._watched.get(channel_id)
        if watch is None:
            keys = channel_keys(self.prefix, channel_id)
            state, floor = await retrying(
                lambda: self._redis.hmget(keys.meta, ["state", "last_id"]),
                self._redis,
                idempotent=True,
            )
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
        if watch.link is None and self._reroute is None:
            await self._attach(watch)
        # Else it is being subscribed, or the re-route after a failure attaches it.
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
        link, watch.link = watch.link, None
        if link is not None:
            await link.remove(watch)

    def deleted(self, channel_id: str) -> None:
        """This process deleted the channel: tell its watchers now, not when the notice comes."""
        watch = self._watched.get(channel_id)
        if watch is not None:
            self._deliver_gone(channel_id, watch)

    async def _attach(self, watch: _Watch) -> None:
        try:
            node = self._route.node_for(watch.live)
        except RedisError as exc:  # the slot has no known owner right now (a failover)
            log.info("live feed: no route for %r (%s); re-reading the slot map", watch.live, exc)
            self._schedule_reroute()
            return
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link(self, node)
        await link.add(watch)

    def _link_failed(self, link: _Link, exc: BaseException | None) -> None:
        """A connection broke (or was refused): its channels go elsewhere, after a backoff."""
        if self._links.get(link.node) is link:
            del self._links[link.node]
        for watch in link.watches.values():
            if watch.link is link:
                watch.link = None
                watch.confirmed = False
                watch.catch_up = True
        if self._closing:
            return
        self.reconnects += 1
        log.warning(
            "live feed connection to %s lost (%s); re-subscribing in %.2fs",
            link.node or "redis",
            exc,
            self._delay,
        )
        self._schedule_reroute()

    def _moved(self, link: _Link, live: bytes) -> None:
        """Redis unsubscribed us itself: the channel's slot now belongs to another node."""
        watch = link.watches.pop(live, None)
        if watch is None or watch.link is not link:
            return
        watch.link = None
        watch.confirmed = False
        watch.catch_up = True
        self._delay = RECONNECT_MIN
        self._schedule_reroute()

    def _connected(self) -> None:
        self._delay = RECONNECT_MIN  # Redis is reachable: the next drop retries at once

    def _schedule_reroute(self) -> None:
        if self._reroute is None and not self._closing:
            self._reroute = asyncio.create_task(self._reroute_after(self._delay))
            self._delay = min(self._delay * 2, RECONNECT_MAX)

    async def _reroute_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._route.refresh()
        except Exception as exc:
            log.warning("live feed: cannot read the slot map (%s)", exc)
            self._reroute = None
            self._schedule_reroute()
            return
        self._reroute = None
        # Connections that serve nothing any more (the node was demoted or left).
        for node, link in list(self._links.items()):
            if not link.watches:
                del self._links[node]
                link.task.cancel()
        for watch in list(self._watched.values()):
            if watch.link is None:
                await self._attach(watch)

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
        """Deliver what was appended to these channels while they were not subscribed.

        One pipeline per round for all channels (not a round trip per channel); channels with
        more than a page missed go another round.
        """
        todo: list[tuple[str, _Watch, str | None]] = []
        for watch in batch:
            channel_id = self._by_live.get(watch.live)
            if channel_id is not None and self._watched.get(channel_id) is watch:
                todo.append((channel_id, watch, watch.last_id or watch.floor))
        while todo:
            replies = await retrying(
                functools.partial(self._read_streams, todo), self._redis, idempotent=True
            )
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

    async def _read_streams(self, todo: Sequence[tuple[str, _Watch, str | None]]) -> list[Any]:
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
            return list(await pipe.execute())


class _Link:
    """One pub/sub connection to one node, read by one task, for the channels routed there."""

    def __init__(self, feed: LiveFeed, node: str) -> None:
        self.feed = feed
        self.node = node
        self.watches: dict[bytes, _Watch] = {}
        self.conn: AbstractConnection | None = None  # once subscribed
        # (kind, live name, watch) per (un)subscribe sent on conn: Redis confirms them in order,
        # so the head of this queue is what the next confirmation is about.
        self.pending: deque[tuple[bytes, bytes, _Watch | None]] = deque()
        self.send_lock = asyncio.Lock()
        self.sends: set[asyncio.Future[None]] = set()  # (un)subscribes in flight
        # Subscriptions that need a catch-up once confirmed; until all are, messages are
        # buffered, since what was missed must be delivered before what comes live.
        self.catching: set[bytes] = set()
        self.caught: list[_Watch] = []
        self.buffered: list[list[Any]] = []
        sharded = feed.sharded
        self.subscribe = b"ssubscribe" if sharded else b"subscribe"
        self.unsubscribe = b"sunsubscribe" if sharded else b"unsubscribe"
        self.message = b"smessage" if sharded else b"message"
        self.task = asyncio.create_task(self._run(), name=f"redis-live-feed-{node}")

    async def add(self, watch: _Watch) -> None:
        self.watches[watch.live] = watch
        watch.link = self
        await self._send_to_the_end(self.subscribe, [watch])

    async def remove(self, watch: _Watch) -> None:
        if self.watches.get(watch.live) is watch:
            del self.watches[watch.live]
            await self._send_to_the_end(self.unsubscribe, [watch])

    async def _send_to_the_end(self, kind: bytes, watches: Sequence[_Watch]) -> None:
        """Send even when the reader that asked for it is cancelled meanwhile.

        `pending` is appended before the command is written; a write abandoned half-way would
        leave the queue (and maybe the wire) out of step with Redis's confirmations, and every
        later confirmation on this connection would be pinned on the wrong channel, hanging the
        next readers. The send is short and bounded by the connection's own timeouts.
        """
        task = asyncio.ensure_future(self._send(kind, watches))
        self.sends.add(task)  # the loop keeps tasks only weakly
        task.add_done_callback(self.sends.discard)
        await asyncio.shield(task)

    async def _send(self, kind: bytes, watches: Sequence[_Watch]) -> None:
        async with self.send_lock:
            conn = self.conn
            # send_command() would silently open a new connection, without our subscriptions.
            if conn is None or not conn.is_connected:
                return  # the batch sent when (re)connected covers it
            try:
                await self._send_locked(conn, kind, watches)
            except CONNECTION_ERRORS:
                # The reader task notices the broken connection too.
                log.debug("pub/sub send failed; the feed reconnects")

    async def _send_locked(
        self, conn: AbstractConnection, kind: bytes, watches: Sequence[_Watch]
    ) -> None:
        groups: dict[int, list[_Watch]] = {}
        for watch in watches:
            # SSUBSCRIBE takes channels of one slot per command.
            groups.setdefault(key_slot(watch.live) if self.feed.sharded else 0, []).append(watch)
        for group in groups.values():
            for watch in group:
                self.pending.append((kind, watch.live, watch))
                if kind == self.subscribe and watch.catch_up:
                    self.catching.add(watch.live)
            await conn.send_command(kind.upper(), *[w.live for w in group], check_health=False)

    async def _run(self) -> None:
        conn: AbstractConnection | None = None
        failure: BaseException | None = None
        try:
            conn = self.feed._route.connection(self.node)
            await conn.connect()  # type: ignore[no-untyped-call]
            self.feed._connected()
            await self._read(conn)
        except asyncio.CancelledError:
            raise
        except (*CONNECTION_ERRORS, ResponseError) as exc:
            failure = exc
        except Exception as exc:
            log.exception("redis live feed failed")
            failure = exc
        finally:
            async with self.send_lock:
                self.conn = None
                self.pending.clear()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            if failure is not None:
                self.feed._link_failed(self, failure)

    async def _read(self, conn: AbstractConnection) -> None:
        # Subscribe everything routed here before add() may send on this connection (the lock
        # keeps the confirmations in the order of the pending queue).
        async with self.send_lock:
            self.catching.clear()
            self.caught.clear()
            self.buffered.clear()
            await self._send_locked(conn, self.subscribe, list(self.watches.values()))
            self.conn = conn
        ping_sent = False
        while True:
            reply = await conn.read_response(disable_decoding=True, timeout=HEALTH_INTERVAL)
            if reply is None:
                if ping_sent or not conn.is_connected:
                    raise RedisTimeoutError("no answer from redis on the pub/sub connection")
                async with self.send_lock:
                    await conn.send_command("PING", check_health=False)
                ping_sent = True
                continue
            ping_sent = False
            if not isinstance(reply, list):  # b"PONG": fakeredis answers PING like this
                continue
            kind = reply[0]
            if kind == self.message:
                if self.catching:
                    self.buffered.append(reply)
                else:
                    self.feed._on_message(reply[1], reply[2])
            elif kind in (self.subscribe, self.unsubscribe):
                self._on_confirmation(kind, reply[1])
                if self.caught and not self.catching:
                    caught, self.caught = self.caught, []
                    await self.feed._catch_up(caught)
                    buffered, self.buffered = self.buffered, []
                    for message in buffered:
                        self.feed._on_message(message[1], message[2])

    def _on_confirmation(self, kind: bytes, live: bytes) -> None:
        if self.pending and self.pending[0][:2] == (kind, live):
            _, _, watch = self.pending.popleft()
            if kind == self.subscribe and watch is not None:
                if live in self.catching:
                    self.catching.discard(live)
                    watch.catch_up = False
                    self.caught.append(watch)
                if self.watches.get(live) is watch:
                    watch.wake()
            return
        if kind == self.unsubscribe and live in self.watches:
            # Not asked for: Redis drops shard subscriptions of a slot the node no longer owns.
            self.feed._moved(self, live)
            return
        log.warning("unexpected pub/sub confirmation %r %r", kind, live)
        while self.pending:
            pending_kind, pending_live, _ = self.pending.popleft()
            if (pending_kind, pending_live) == (kind, live):
                return
