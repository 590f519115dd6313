"""The Redis key layout of Unbroken channels and the scripts that write them.

This module is shared by the broker's Redis engine and by backends that write straight into
Redis (the worker library). It imports nothing from aiohttp (only redis-py, the stdlib and
broker.engine.base / broker.events), so a worker process can use it with a plain
`redis.asyncio.Redis` client (`decode_responses=False`, the default):

    from broker.engine.redis_layout import DEFAULT_PREFIX, append_events

    result = await append_events(
        redis,                     # redis.asyncio.Redis (or a Cluster client)
        DEFAULT_PREFIX,            # "unbroken", or the broker's --redis-prefix
        channel_id,                # "ch_..." from the channel token
        [("message", pack(value))],  # (type, msgpack bytes); only the last may be end/error
        writer="w-1234", seq=7,    # optional idempotency key; both or neither
    )  # -> AppendResult(ids, duplicate, last_event_id)
       # raises ChannelNotFound (expired/deleted/never created), ChannelEnded,
       # ChannelCancelled (a reader cancelled: stop generating), ValueError

The channel's limits (idle_ttl, retention, max_messages) are stored in its meta hash when the
broker creates it, so a writer needs no configuration beyond the Redis URL and the prefix.
See docs/redis-layout.md for the layout and redis-cli recipes.
"""

from __future__ import annotations

import hashlib
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from broker.engine.base import (
    AppendResult,
    ChannelCancelled,
    ChannelEnded,
    ChannelNotFound,
    Limits,
    check_batch,
    writer_timeout_error,
)
from broker.engine.durability import Durability, run_durably
from broker.events import Event, EventType, pack

DEFAULT_PREFIX = "unbroken"

# Any redis-py asyncio client returning bytes: one server, a Sentinel-managed primary or a
# Cluster (broker.engine.redis_client.connect() makes the right one from a URL).
Client = Redis | RedisCluster

# The payload published for a deleted channel: empty id, type "deleted", no data.
DELETED_NOTICE = b"\ndeleted\n"


@dataclass(slots=True)
class LuaScript:
    """A Lua script loaded once per process and run by its SHA1 (EVALSHA).

    Works with any client (Redis, RedisCluster, a Sentinel-managed master): the body is sent only
    when a server answers NOSCRIPT (a restarted or newly promoted node), not with every call.
    """

    name: str
    body: bytes
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha = hashlib.sha1(self.body).hexdigest()

    async def __call__(self, redis: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL both runs and caches it on the node that owns these keys.
            return await redis.eval(self.body, len(keys), *keys, *args)


# Prepended to every script. Live entries go out with sharded pub/sub (SPUBLISH) on Redis >= 7:
# in a Cluster only the shard that owns the channel's slot handles the message, where a classic
# PUBLISH is broadcast to every node. Redis < 7 has no SPUBLISH (nor REDIS_VERSION_NUM). The
# broker's live feed subscribes the matching way, deciding with the same expression
# (SHARDED_PUBSUB_CHECK), so a worker and a broker always agree whatever their versions.
SHARDED_PUBSUB_CHECK = "(redis.REDIS_VERSION_NUM or 0) >= 0x070000"
PRELUDE = f"local PUBLISH = {SHARDED_PUBSUB_CHECK} and 'SPUBLISH' or 'PUBLISH'\n".encode()
# Then the local functions the scripts share (trim_exactly, expire_all, publish_entry, ...): one
# copy in lib.lua, yet each script stays a single self-contained body for EVALSHA.
LIBRARY = PRELUDE + Path(__file__).with_name("lib.lua").read_bytes()


def _load(name: str) -> LuaScript:
    return LuaScript(name, LIBRARY + Path(__file__).with_name(name).read_bytes())


async def sharded_pubsub(redis: Any) -> bool:
    """Whether the scripts publish with SPUBLISH on this server (see PRELUDE).

    EVAL_RO (Redis >= 7, like SPUBLISH; read-only, so a replica answers it too): an older server
    refuses the command itself, which means no SPUBLISH either.
    """
    command = ("EVAL_RO", f"return {SHARDED_PUBSUB_CHECK} and 1 or 0", 0)
    options: dict[str, Any] = {}
    if isinstance(redis, RedisCluster):
        # Without keys a Cluster client must be told where to send it: any node answers the same.
        await redis.initialize()
        options["target_nodes"] = redis.get_random_node()
    try:
        return bool(await redis.execute_command(*command, **options))
    except ResponseError:
        return False


APPEND = _load("append.lua")
CREATE = _load("create.lua")
DELETE = _load("delete.lua")
CANCEL = _load("cancel.lua")
HEARTBEAT = _load("heartbeat.lua")
EXPIRE_WRITER = _load("expire_writers.lua")


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """Names of one channel's keys. The `{id}` hash tag puts them all in one Cluster slot."""

    events: str  # stream: entries {type, data}
    meta: str  # hash: state, created_at, updated_at, count, last_id, dropped_until, limits
    writers: str  # hash: writer id -> "<last seq> <last event id>"
    live: str  # pub/sub channel (not a key): "<id>\n<type>\n<msgpack data>" per new entry
    # hash: broker instance id -> "<valid until, ms> <sse> <chunked> <ws> <poll>" (readers per
    # broker process; has its own TTL, refreshed by each broker)
    readers: str

    @property
    def stored(self) -> tuple[str, str, str]:
        """The keys that hold data, in the order the scripts take them."""
        return (self.events, self.meta, self.writers)


def channel_keys(prefix: str, channel_id: str) -> ChannelKeys:
    base = f"{prefix}:{{{channel_id}}}"
    return ChannelKeys(
        events=f"{base}:events",
        meta=f"{base}:meta",
        writers=f"{base}:writers",
        live=f"{base}:live",
        readers=f"{base}:readers",
    )


# The channel index (for listing only) is split into this many sorted sets, each in its own
# Cluster slot (hash tag), so no single node holds it all; listing merges them.
INDEX_SHARDS = 16
# Per create, this many index entries old enough to be dead are checked (and removed if dead):
# the index stays near the number of live channels without anyone listing.
INDEX_TRIM = 4


def index_keys(prefix: str) -> list[str]:
    """Every shard of the channel index: sorted sets of channel ids scored by created_at (ms)."""
    return [f"{prefix}:channels:{{ix{n:02d}}}" for n in range(INDEX_SHARDS)]


def index_key(prefix: str, channel_id: str) -> str:
    """The index shard that lists this channel."""
    return index_keys(prefix)[zlib.crc32(channel_id.encode()) % INDEX_SHARDS]


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def create_channel(
    redis: Client,
    prefix: str,
    channel_id: str,
    limits: Limits,
    *,
    created_at: int | None = None,
    writer_timeout: int = 0,
) -> bool:
    """Create an open channel with these limits and writer lease (seconds, 0 = none); False
    when it already exists."""
    keys = channel_keys(prefix, channel_id)
    now = now_ms() if created_at is None else created_at
    created = await CREATE(
        redis,
        keys.stored,
        [now, limits.idle_ttl, limits.retention, limits.max_messages, writer_timeout],
    )
    if not created:
        return False
    await index_channel(redis, prefix, channel_id, limits, now)
    return True


async def index_channel(
    redis: Client, prefix: str, channel_id: str, limits: Limits, created_at: int
) -> None:
    """Add a channel to its index shard and trim a few dead entries from that shard.

    The index lives in other slots than the channel, so the create script cannot update it; an
    entry whose channel is gone is removed here (a bounded, random sample of the entries old
    enough to have expired) or the next time channels are listed. A shard nobody adds to for
    twice a channel's lifetime expires as a whole.
    """
    shard = index_key(prefix, channel_id)
    lifetime_ms = (limits.idle_ttl + limits.retention) * 1000
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(shard, {channel_id: created_at})
        pipe.pexpire(shard, 2 * lifetime_ms, gt=True)
        pipe.pexpire(shard, 2 * lifetime_ms, nx=True)
        # Created more than idle_ttl ago: dead unless written to since.
        pipe.zcount(shard, "-inf", created_at - limits.idle_ttl * 1000)
        _, _, _, old = await pipe.execute()
    if not old:
        return
    start = random.randrange(max(1, old - INDEX_TRIM + 1))
    candidates = [
        _text(member) for member in await redis.zrange(shard, start, start + INDEX_TRIM - 1)
    ]
    if not candidates:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for candidate in candidates:
            pipe.exists(channel_keys(prefix, candidate).meta)
        alive = await pipe.execute()
    dead = [c for c, exists in zip(candidates, alive, strict=True) if not exists]
    if dead:
        await redis.zrem(shard, *dead)


async def append_events(
    redis: Client,
    prefix: str,
    channel_id: str,
    items: Sequence[tuple[EventType, bytes]],
    *,
    writer: str | None = None,
    seq: int | None = None,
    durability: Durability | None = None,
) -> AppendResult:
    """Append events atomically (append.lua) and publish them for live delivery.

    With a writer id and seq, the batch takes the seqs `seq … seq+len-1`; a batch whose seq is
    not above the writer's last stored seq is a duplicate: nothing is stored and the result has
    `duplicate=True` and the writer's last event id (even if the channel has ended since).
    Raises ChannelNotFound, ChannelEnded, ChannelCancelled, ValueError (bad batch).
    """
    check_batch(items, writer, seq)
    return await run_append(
        redis, prefix, channel_id, items, writer=writer, seq=seq, durability=durability
    )


async def run_append(
    redis: Client,
    prefix: str,
    channel_id: str,
    items: Sequence[tuple[EventType, bytes]],
    *,
    writer: str | None,
    seq: int | None,
    durability: Durability | None = None,
) -> AppendResult:
    """append_events() for a batch already checked by check_batch() (the engine's path).

    With `durability`, the answer waits until Redis acknowledged the write as durable (see
    broker/engine/durability.py); DurabilityTimeout when it did not in time."""
    keys = channel_keys(prefix, channel_id)
    args: list[str | bytes | int] = [
        keys.live,
        now_ms(),
        writer if writer is not None else "",
        seq if seq is not None else 0,
        seq + len(items) - 1 if seq is not None else 0,
    ]
    for kind, payload in items:
        args.append(kind)
        args.append(payload)
    if durability is None:
        reply = await APPEND(redis, keys.stored, args)
    else:
        reply, acked = await run_durably(redis, APPEND, keys.stored, args, durability)
        if _text(reply[0]) == "ok":
            durability.check(acked)
    status = _text(reply[0])
    if status == "ok":
        last_id = _text(reply[1]) or None
        return AppendResult(
            ids=[_text(i) for i in reply[2:]], duplicate=False, last_event_id=last_id
        )
    if status == "duplicate":
        return AppendResult(ids=[], duplicate=True, last_event_id=_text(reply[1]) or None)
    raise _refusal(APPEND, reply, channel_id)


def _refusal(script: LuaScript, reply: Any, channel_id: str) -> Exception:
    """The exception for a script's answer that the channel takes no writes (lib.lua's
    closed_reply: not_found, cancelled, ended); RuntimeError for any other answer."""
    status = _text(reply[0])
    if status == "not_found":
        return ChannelNotFound(channel_id)
    if status == "cancelled":
        return ChannelCancelled(channel_id)
    if status == "ended":
        return ChannelEnded(channel_id)
    return RuntimeError(f"{script.name} answered {reply!r}")


async def cancel_channel(
    redis: Client, prefix: str, channel_id: str, payload: bytes
) -> AppendResult:
    """Append the terminal `cancelled` event (cancel.lua): see Engine.cancel()."""
    keys = channel_keys(prefix, channel_id)
    reply = await CANCEL(redis, keys.stored, [keys.live, now_ms(), payload])
    status = _text(reply[0])
    if status == "ok":
        event_id = _text(reply[1])
        return AppendResult(ids=[event_id], duplicate=False, last_event_id=event_id)
    if status == "duplicate":
        return AppendResult(ids=[], duplicate=True, last_event_id=_text(reply[1]) or None)
    raise _refusal(CANCEL, reply, channel_id)


async def heartbeat(redis: Client, prefix: str, channel_id: str) -> None:
    """A writer's sign of life (heartbeat.lua): renews the channel's writer lease (and its idle
    TTL) without appending. Writers that write straight into Redis call it every
    writer_timeout/3 while they work without writing.
    Raises ChannelNotFound, ChannelEnded, ChannelCancelled (stop: a reader cancelled)."""
    keys = channel_keys(prefix, channel_id)
    reply = await HEARTBEAT(redis, keys.stored, [])
    if _text(reply[0]) != "ok":
        raise _refusal(HEARTBEAT, reply, channel_id)


async def expire_writers(redis: Client, prefix: str, channel_ids: Sequence[str]) -> list[str]:
    """End each open channel among these whose writer lease ran out with the terminal `error`
    event `{"code": "writer_timeout", ...}`; returns the ids of the channels it ended.

    One pipelined HMGET finds the candidates; expire_writers.lua then re-checks and appends
    atomically per channel, so a write or heartbeat that lands in between wins.
    """
    if not channel_ids:
        return []
    metas = [channel_keys(prefix, channel_id).meta for channel_id in channel_ids]
    async with redis.pipeline(transaction=False) as pipe:
        for meta in metas:
            pipe.hmget(meta, ["state", "writer_timeout", "writer_deadline"])
        replies = await pipe.execute()
    now = now_ms()
    ended: list[str] = []
    for channel_id, (state, lease, deadline) in zip(channel_ids, replies, strict=True):
        # The server's clock decides in the script; this pre-check only skips the clearly alive
        # (a second of slack for a broker clock behind the server's).
        if state != b"open" or not lease or int(lease) <= 0:
            continue
        if not deadline or not 0 < int(deadline) <= now + 1000:
            continue
        keys = channel_keys(prefix, channel_id)
        payload = pack(writer_timeout_error(int(lease)))
        reply = await EXPIRE_WRITER(redis, keys.stored, [keys.live, now, payload])
        if _text(reply[0]) == "ok":
            ended.append(channel_id)
    return ended


async def delete_channel(redis: Client, prefix: str, channel_id: str) -> bool:
    """Delete a channel's keys and publish the deletion notice; False when it did not exist."""
    keys = channel_keys(prefix, channel_id)
    deleted = await DELETE(redis, keys.stored, [keys.live])
    await redis.zrem(index_key(prefix, channel_id), channel_id)
    return bool(deleted)


def entry_event(entry_id: Any, fields: dict[Any, Any]) -> Event:
    """The event of one stream entry (as XRANGE returns it)."""
    kind = fields.get(b"type", fields.get("type", b"message"))
    data = fields.get(b"data", fields.get("data", b"\xc0"))
    return Event(_text(entry_id), cast(EventType, _text(kind)), data)
