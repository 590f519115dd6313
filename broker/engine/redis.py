"""The Redis engine: channels on Redis Streams, shared by any number of brokers and workers.

Storage (see docs/redis-layout.md and redis_layout.py): one stream + one meta hash + one writers
hash per channel, written by Lua scripts so that an append is atomic. Live delivery of new
entries to this process's readers is the LiveFeed's job (live_feed.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

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
from broker.engine.live_feed import LiveFeed
from broker.engine.redis_client import MAX_CONNECTIONS, ObservedRedis, connect
from broker.engine.redis_layout import (
    DEFAULT_PREFIX,
    cancel_channel,
    channel_keys,
    create_channel,
    delete_channel,
    entry_event,
    index_key,
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
        client: Redis | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Connect to `url` (see redis_client.connect), or use `client` (its owner closes it; it
        must return bytes).

        `max_connections` bounds the command pool; the live feed's connection comes on top.
        """
        super().__init__(limits)
        if client is None:
            if url is None:
                raise ValueError("RedisEngine needs a url or a client")
            self._redis: Redis = connect(url, max_connections=max_connections)
            self._owns_client = True
        else:
            if client.connection_pool.connection_kwargs.get("decode_responses"):
                raise ValueError("the Redis client must return bytes (decode_responses=False)")
            self._redis = client
            self._owns_client = False
        self.prefix = prefix
        self.feed = LiveFeed(self._redis, prefix)

    @property
    def redis(self) -> Redis:
        return self._redis

    def observe(self, observer: EngineObserver | None) -> None:
        super().observe(observer)
        if isinstance(self._redis, ObservedRedis):
            self._redis.command_observer = None if observer is None else observer.command

    def stats(self) -> dict[str, int]:
        return self.feed.stats()

    async def start(self, deliver: Deliver) -> None:
        await super().start(deliver)
        # Fail at startup on a wrong URL rather than on the first request.
        await self._redis.ping()
        self.feed.start(deliver)

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
        if not await create_channel(
            self._redis,
            self.prefix,
            channel_id,
            self.limits,
            created_at=now,
            writer_timeout=writer_timeout,
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
        return await run_append(self._redis, self.prefix, channel_id, items, writer=writer, seq=seq)

    async def _cancel(self, channel_id: str, payload: bytes) -> AppendResult:
        return await cancel_channel(self._redis, self.prefix, channel_id, payload)

    @timed
    async def heartbeat(self, channel_id: str) -> None:
        await heartbeat_channel(self._redis, self.prefix, channel_id)

    @timed
    async def expire_writers(self, channel_ids: Sequence[str]) -> list[str]:
        return await expire_channel_writers(self._redis, self.prefix, channel_ids)

    @timed
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
        keys = channel_keys(self.prefix, channel_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.meta)
            pipe.pttl(keys.meta)
            raw_meta, pttl = await pipe.execute()
        return _info(channel_id, raw_meta, pttl)

    @timed
    async def delete(self, channel_id: str) -> bool:
        existed = await delete_channel(self._redis, self.prefix, channel_id)
        if existed:
            self.feed.deleted(channel_id)
        return existed

    @timed
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

    @timed
    async def exists_many(self, channel_ids: Sequence[str]) -> list[bool]:
        if not channel_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel_id in channel_ids:
                pipe.exists(channel_keys(self.prefix, channel_id).meta)
            return [bool(n) for n in await pipe.execute()]

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
        state=meta.get("state", "open"),
        created_at=int(meta.get("created_at", 0)),
        updated_at=int(meta.get("updated_at", 0)),
        messages=int(meta.get("count", 0)),
        last_event_id=meta.get("last_id") or None,
        ttl=-1 if pttl < 0 else math.floor(pttl / 1000),
        writer_timeout=int(meta.get("writer_timeout") or 0),
    )
