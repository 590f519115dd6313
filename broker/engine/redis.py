"""The Redis engine: channels on Redis Streams, shared by any number of brokers and workers.

Storage (see docs/redis-layout.md and redis_layout.py): one stream + one meta hash + one writers
hash per channel, written by Lua scripts so that an append is atomic. Live delivery of new
entries to this process's readers is the LiveFeed's job (live_feed.py).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from broker.engine.base import (
    AppendResult,
    ChannelExists,
    ChannelInfo,
    ChannelNotFound,
    Deliver,
    Engine,
    EngineObserver,
    Limits,
    ReadResult,
    timed,
)
from broker.engine.durability import DEFAULT_TIMEOUT_MS, Durability, plan
from broker.engine.live_feed import LiveFeed
from broker.engine.redis_client import (
    MAX_CONNECTIONS,
    RETRY_DEADLINE,
    ObservedRedis,
    ObservedRedisCluster,
    connect,
    retrying,
)
from broker.engine.redis_layout import (
    DEFAULT_PREFIX,
    Client,
    cancel_channel,
    channel_keys,
    create_channel,
    delete_channel,
    entry_event,
    index_keys,
    now_ms,
    run_append,
)
from broker.engine.redis_layout import (
    expire_writers as expire_channel_writers,
)
from broker.engine.redis_layout import (
    heartbeat as heartbeat_channel,
)
from broker.events import EventType, parse_event_id
from broker.vocabulary import TRANSPORTS, channel_state

_T = TypeVar("_T")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _meta_dict(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


class RedisEngine(Engine):
    name = "redis"

    def __init__(
        self,
        limits: Limits,
        url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        client: Client | None = None,
        max_connections: int = MAX_CONNECTIONS,
        retry_deadline: float = RETRY_DEADLINE,
        durable_replicas: int | None = None,
        durable_timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> None:
        """Connect to `url` (see redis_client.connect), or use `client` (its owner closes it; it
        must return bytes).

        `max_connections` bounds the command pool; the live feed's connections come on top.
        Operations retry through a failover (see redis_client.retrying) for `retry_deadline`
        seconds before the error reaches the caller. With `durable_replicas` (0 or more), each
        append waits until Redis made it durable (see durability.py).
        """
        super().__init__(limits)
        if client is None:
            if url is None:
                raise ValueError("RedisEngine needs a url or a client")
            self._redis: Client = connect(url, max_connections=max_connections)
            self._owns_client = True
        else:
            if client.get_encoder().decode_responses:
                raise ValueError("the Redis client must return bytes (decode_responses=False)")
            self._redis = client
            self._owns_client = False
        self.prefix = prefix
        self.retry_deadline = retry_deadline
        self._durable_request = (durable_replicas, durable_timeout_ms)
        self.durability: Durability | None = None
        self.feed = LiveFeed(self._redis, prefix)
        # Names this process's share of the reader counts (see share_readers).
        self.instance = uuid.uuid4().hex[:12]

    @property
    def redis(self) -> Client:
        return self._redis

    async def _retry(self, call: Callable[[], Awaitable[_T]], *, idempotent: bool) -> _T:
        return await retrying(
            call, self._redis, idempotent=idempotent, deadline=self.retry_deadline
        )

    def observe(self, observer: EngineObserver | None) -> None:
        super().observe(observer)
        if isinstance(self._redis, ObservedRedis | ObservedRedisCluster):
            self._redis.command_observer = None if observer is None else observer.command

    def stats(self) -> dict[str, int]:
        return self.feed.stats()

    async def start(self, deliver: Deliver) -> None:
        await super().start(deliver)
        # Fail at startup on a wrong URL rather than on the first request.
        await self._redis.ping()
        replicas, timeout_ms = self._durable_request
        if replicas is not None:
            self.durability = await plan(self._redis, replicas, timeout_ms)
        await self.feed.start(deliver)

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self.feed.close()
        if self._owns_client:
            await self._redis.aclose()

    # -- storage --------------------------------------------------------------------------

    @timed
    async def create(self, channel_id: str, *, writer_timeout: int = 0) -> ChannelInfo:
        now = now_ms()
        # Not retried once it may have run: a second try would find the channel and say
        # "exists". The index entry is added after the channel (another slot).
        created = await self._retry(
            lambda: create_channel(
                self._redis,
                self.prefix,
                channel_id,
                self.limits,
                created_at=now,
                writer_timeout=writer_timeout,
            ),
            idempotent=False,
        )
        if not created:
            raise ChannelExists(channel_id)
        return ChannelInfo(
            id=channel_id,
            state="open",
            created_at=now,
            updated_at=now,
            messages=0,
            last_event_id=None,
            ttl=self.limits.idle_ttl,
            writer_timeout=writer_timeout,
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
        # live feed has a single source of order.
        # With a writer id and seq a retried batch is recognised as a duplicate, so it may be
        # retried whatever happened; without, only when Redis surely did not run it.
        return await self._retry(
            lambda: run_append(
                self._redis,
                self.prefix,
                channel_id,
                items,
                writer=writer,
                seq=seq,
                durability=self.durability,
            ),
            idempotent=writer is not None,
        )

    async def _cancel(self, channel_id: str, payload: bytes) -> AppendResult:
        # A repeated cancel answers "duplicate", like the client's own retry would.
        return await self._retry(
            lambda: cancel_channel(self._redis, self.prefix, channel_id, payload),
            idempotent=True,
        )

    @timed
    async def heartbeat(self, channel_id: str) -> None:
        await self._retry(
            lambda: heartbeat_channel(self._redis, self.prefix, channel_id), idempotent=True
        )

    @timed
    async def expire_writers(self, channel_ids: Sequence[str]) -> list[str]:
        # The script re-checks the deadline, so running it twice ends a channel once.
        return await self._retry(
            lambda: expire_channel_writers(self._redis, self.prefix, channel_ids),
            idempotent=True,
        )

    @timed
    async def read(self, channel_id: str, after: str | None, count: int) -> ReadResult:
        return await self._retry(lambda: self._read(channel_id, after, count), idempotent=True)

    async def _read(self, channel_id: str, after: str | None, count: int) -> ReadResult:
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
        events = [entry_event(entry_id, fields) for entry_id, fields in entries[:count]]
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

    @timed
    async def info(self, channel_id: str) -> ChannelInfo | None:
        return await self._retry(lambda: self._info_once(channel_id), idempotent=True)

    async def _info_once(self, channel_id: str) -> ChannelInfo | None:
        keys = channel_keys(self.prefix, channel_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.meta)
            pipe.pttl(keys.meta)
            raw_meta, pttl = await pipe.execute()
        return _info(channel_id, raw_meta, pttl)

    @timed
    async def delete(self, channel_id: str) -> bool:
        existed = await self._retry(
            lambda: delete_channel(self._redis, self.prefix, channel_id), idempotent=True
        )
        if existed:
            self.feed.deleted(channel_id)
        return existed

    @timed
    async def channels(self, limit: int = 1000) -> list[ChannelInfo]:
        return await self._retry(lambda: self._channels(limit), idempotent=True)

    async def _channels(self, limit: int) -> list[ChannelInfo]:
        # The newest `limit` entries of every index shard, merged: the newest `limit` overall are
        # among them. Entries of dead channels are removed on the way (a shard then yields more).
        shards = index_keys(self.prefix)
        offsets = dict.fromkeys(shards, 0)
        found: list[ChannelInfo] = []
        while offsets and len(found) < limit:
            want = limit - len(found)
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard, offset in offsets.items():
                    pipe.zrevrange(shard, offset, offset + want - 1, withscores=True)
                pages = await pipe.execute()
            candidates: list[tuple[float, str, str]] = []
            for shard, page in zip(list(offsets), pages, strict=True):
                if len(page) < want:
                    del offsets[shard]  # exhausted after this page
                else:
                    offsets[shard] += len(page)
                candidates += [(score, _text(member), shard) for member, score in page]
            if not candidates:
                break
            candidates.sort(reverse=True)
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, channel_id, _ in candidates:
                    keys = channel_keys(self.prefix, channel_id)
                    pipe.hgetall(keys.meta)
                    pipe.pttl(keys.meta)
                replies = await pipe.execute()
            stale: dict[str, list[str]] = {}
            for n, (_, channel_id, shard) in enumerate(candidates):
                info = _info(channel_id, replies[2 * n], replies[2 * n + 1])
                if info is None:
                    stale.setdefault(shard, []).append(channel_id)
                else:
                    found.append(info)
            for shard, dead in stale.items():
                await self._redis.zrem(shard, *dead)
                if shard in offsets:
                    offsets[shard] -= len(dead)
        found.sort(key=lambda c: c.created_at, reverse=True)
        return found[:limit]

    @timed
    async def exists_many(self, channel_ids: Sequence[str]) -> list[bool]:
        if not channel_ids:
            return []

        async def exists() -> list[bool]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel_id in channel_ids:
                    pipe.exists(channel_keys(self.prefix, channel_id).meta)
                return [bool(n) for n in await pipe.execute()]

        return await self._retry(exists, idempotent=True)

    # -- readers on every broker process ----------------------------------------------------

    async def share_readers(self, counts: Mapping[str, Mapping[str, int]], ttl: float) -> None:
        if not counts:
            return
        until = now_ms() + int(ttl * 1000)

        async def share() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel_id, by_transport in counts.items():
                    key = channel_keys(self.prefix, channel_id).readers
                    if any(by_transport.values()):
                        numbers = " ".join(str(by_transport.get(t, 0)) for t in TRANSPORTS)
                        pipe.hset(key, self.instance, f"{until} {numbers}")
                        pipe.pexpire(key, int(ttl * 1000))
                    else:
                        pipe.hdel(key, self.instance)
                await pipe.execute()

        await self._retry(share, idempotent=True)

    async def readers_elsewhere(self, channel_id: str) -> dict[str, int] | None:
        key = channel_keys(self.prefix, channel_id).readers
        shares = await self._retry(lambda: self._redis.hgetall(key), idempotent=True)
        now = now_ms()
        total: dict[str, int] = dict.fromkeys(TRANSPORTS, 0)
        stale = []
        for raw_instance, raw in shares.items():
            instance = _text(raw_instance)
            if instance == self.instance:
                continue  # this process counts its own readers live
            fields = _text(raw).split()
            if not fields or int(fields[0]) < now:
                stale.append(instance)  # a broker that stopped refreshing (gone)
                continue
            for transport, number in zip(TRANSPORTS, fields[1:], strict=False):
                total[transport] += int(number)
        if stale:
            await self._redis.hdel(key, *stale)
        return total

    # -- live delivery: the feed's ----------------------------------------------------------

    @timed
    async def watch(self, channel_id: str) -> None:
        await self.feed.watch(channel_id)

    @timed
    async def unwatch(self, channel_id: str) -> None:
        await self.feed.unwatch(channel_id)


def _info(channel_id: str, raw_meta: dict[Any, Any], pttl: int) -> ChannelInfo | None:
    if not raw_meta:
        return None
    meta = _meta_dict(raw_meta)
    return ChannelInfo(
        id=channel_id,
        state=channel_state(meta.get("state", "open")),
        created_at=int(meta.get("created_at", 0)),
        updated_at=int(meta.get("updated_at", 0)),
        messages=int(meta.get("count", 0)),
        last_event_id=meta.get("last_id") or None,
        ttl=-1 if pttl < 0 else math.floor(pttl / 1000),
        writer_timeout=int(meta.get("writer_timeout") or 0),
    )
