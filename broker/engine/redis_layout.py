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
       # raises ChannelNotFound (expired/deleted/never created), ChannelEnded, ValueError

The channel's limits (idle_ttl, retention, max_messages) are stored in its meta hash when the
broker creates it, so a writer needs no configuration beyond the Redis URL and the prefix.
See docs/redis-layout.md for the layout and redis-cli recipes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from broker.engine.base import (
    MAX_BATCH_EVENTS,
    AppendResult,
    ChannelEnded,
    ChannelNotFound,
    Limits,
)
from broker.events import TERMINAL_TYPES, EventType

DEFAULT_PREFIX = "unbroken"

# The payload published for a deleted channel: empty id, type "deleted", no data.
DELETED_NOTICE = b"\ndeleted\n"


def _load(name: str) -> str:
    return Path(__file__).with_name(name).read_text(encoding="utf-8")


APPEND_LUA = _load("append.lua")
CREATE_LUA = _load("create.lua")
DELETE_LUA = _load("delete.lua")


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """Names of one channel's keys. The `{id}` hash tag puts them all in one Cluster slot."""

    events: str  # stream: entries {type, data}
    meta: str  # hash: state, created_at, updated_at, count, last_id, dropped_until, limits
    writers: str  # hash: writer id -> "<last seq> <last event id>"
    live: str  # pub/sub channel (not a key): "<id>\n<type>\n<msgpack data>" per new entry

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
    )


def index_key(prefix: str) -> str:
    """The sorted set of channel ids scored by created_at (ms): only an index for listing."""
    return f"{prefix}:channels"


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_items(items: Sequence[tuple[EventType, bytes]]) -> None:
    """Only the last item of a batch may be terminal: nothing may follow an end or error."""
    if len(items) > MAX_BATCH_EVENTS:
        raise ValueError(f"at most {MAX_BATCH_EVENTS} events per append, not {len(items)}")
    for kind, _ in items[:-1]:
        if kind in TERMINAL_TYPES:
            raise ValueError("only the last event of a batch may be 'end' or 'error'")
    for kind, payload in items:
        if kind not in ("message", "end", "error"):
            raise ValueError(f"unknown event type {kind!r}")
        if not isinstance(payload, bytes):
            raise ValueError("event data must be msgpack bytes")


async def create_channel(
    redis: Redis, prefix: str, channel_id: str, limits: Limits, *, created_at: int | None = None
) -> bool:
    """Create an open channel with these limits; False when it already exists."""
    keys = channel_keys(prefix, channel_id)
    now = now_ms() if created_at is None else created_at
    created = await redis.register_script(CREATE_LUA)(
        keys=list(keys.stored),
        args=[now, limits.idle_ttl, limits.retention, limits.max_messages],
    )
    if not created:
        return False
    # The index lives in another slot, so it cannot be updated by the script; a member whose
    # channel is gone is removed the next time channels are listed.
    await redis.zadd(index_key(prefix), {channel_id: now})
    return True


async def append_events(
    redis: Redis,
    prefix: str,
    channel_id: str,
    items: Sequence[tuple[EventType, bytes]],
    *,
    writer: str | None = None,
    seq: int | None = None,
) -> AppendResult:
    """Append events atomically (append.lua) and publish them for live delivery.

    With a writer id and seq, the batch takes the seqs `seq … seq+len-1`; a batch whose seq is
    not above the writer's last stored seq is a duplicate: nothing is stored and the result has
    `duplicate=True` and the writer's last event id (even if the channel has ended since).
    Raises ChannelNotFound, ChannelEnded, ValueError (bad batch).
    """
    check_items(items)
    dedup = writer is not None and seq is not None
    if dedup and (seq is None or seq < 1):
        raise ValueError("seq must be an integer >= 1")
    keys = channel_keys(prefix, channel_id)
    args: list[str | bytes | int] = [
        keys.live,
        now_ms(),
        writer if dedup and writer is not None else "",
        seq if dedup and seq is not None else 0,
        seq + len(items) - 1 if dedup and seq is not None else 0,
    ]
    for kind, payload in items:
        args.append(kind)
        args.append(payload)
    # Script.__call__ runs EVALSHA and loads the script on NOSCRIPT, so the body is sent once per
    # server, not with every write.
    script = redis.register_script(APPEND_LUA)
    reply = await script(keys=list(keys.stored), args=args)
    status = _text(reply[0])
    if status == "ok":
        last_id = _text(reply[1]) or None
        return AppendResult(
            ids=[_text(i) for i in reply[2:]], duplicate=False, last_event_id=last_id
        )
    if status == "duplicate":
        return AppendResult(ids=[], duplicate=True, last_event_id=_text(reply[1]) or None)
    if status == "not_found":
        raise ChannelNotFound(channel_id)
    if status == "ended":
        raise ChannelEnded(channel_id)
    raise RuntimeError(f"append.lua answered {reply!r}")


async def delete_channel(redis: Redis, prefix: str, channel_id: str) -> bool:
    """Delete a channel's keys and publish the deletion notice; False when it did not exist."""
    keys = channel_keys(prefix, channel_id)
    deleted = await redis.register_script(DELETE_LUA)(keys=list(keys.stored), args=[keys.live])
    await redis.zrem(index_key(prefix), channel_id)
    return bool(deleted)
