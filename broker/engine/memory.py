"""The embedded engine: channels held in this process, same semantics as the Redis engine.

For a single broker process with no Redis. Nothing survives a restart.

The channels live in a `MemoryStore`. Each engine normally has its own; engines given the same
store behave like broker processes sharing one Redis (every one of them delivers the appends of
any of them to its watchers), which lets one contract suite run on every engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.engine.base import (
    AppendResult,
    ChannelCancelled,
    ChannelEnded,
    ChannelExists,
    ChannelInfo,
    ChannelNotFound,
    Deliver,
    Engine,
    Limits,
    ReadResult,
    timed,
    writer_timeout_error,
)
from broker.events import Event, EventType, pack, parse_event_id
from broker.vocabulary import CHANNEL_STATES, ChannelState

SWEEP_INTERVAL = 1.0  # seconds between expiry sweeps


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Channel:
    id: str
    created_at: int
    updated_at: int
    expires_at: float  # time.monotonic() deadline
    events: deque[Event]
    state: ChannelState = "open"
    count: int = 0
    last_ms: int = 0
    last_seq: int = -1
    dropped_until: tuple[int, int] | None = None  # key of the newest event dropped by trimming
    writers: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    writer_timeout: int = 0  # seconds, 0: no writer lease
    writer_deadline: int = 0  # ms since the epoch

    def renew_lease(self) -> None:
        if self.writer_timeout > 0:
            self.writer_deadline = _now_ms() + self.writer_timeout * 1000

    @property
    def last_event_id(self) -> str | None:
        return self.events[-1].id if self.events else None

    def next_id(self) -> str:
        # Same scheme as Redis Streams: milliseconds, then a sequence within the millisecond.
        now = _now_ms()
        if now > self.last_ms:
            self.last_ms, self.last_seq = now, 0
        else:
            self.last_seq += 1
        return f"{self.last_ms}-{self.last_seq}"


class MemoryStore:
    """Channels, and the started engines that relay their events."""

    def __init__(self) -> None:
        self.channels: dict[str, _Channel] = {}
        self.engines: list[MemoryEngine] = []

    def publish(self, channel_id: str, events: Sequence[Event] | None) -> None:
        """Tell every engine watching the channel (the memory counterpart of pub/sub)."""
        for engine in list(self.engines):
            engine._relay(channel_id, events)


class MemoryEngine(Engine):
    name = "memory"

    def __init__(self, limits: Limits, store: MemoryStore | None = None) -> None:
        super().__init__(limits)
        self.store = store if store is not None else MemoryStore()
        self._channels = self.store.channels
        self._watched: set[str] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def stats(self) -> dict[str, int]:
        states = Counter(channel.state for channel in self._channels.values())
        return {f"channels_{state}": states[state] for state in {*CHANNEL_STATES, *states}}

    async def start(self, deliver: Deliver) -> None:
        await super().start(deliver)
        self.store.engines.append(self)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-engine-sweeper")

    def _relay(self, channel_id: str, events: Sequence[Event] | None) -> None:
        if channel_id in self._watched and self._deliver is not None:
            self._deliver(channel_id, events)

    async def close(self) -> None:
        if self in self.store.engines:
            self.store.engines.remove(self)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def _get(self, channel_id: str) -> _Channel | None:
        channel = self._channels.get(channel_id)
        if channel is not None and channel.expires_at <= time.monotonic():
            self._drop(channel_id)
            return None
        return channel

    def _drop(self, channel_id: str) -> None:
        if self._channels.pop(channel_id, None) is not None:
            self.store.publish(channel_id, None)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for channel_id in [c.id for c in self._channels.values() if c.expires_at <= now]:
                self._drop(channel_id)

    def _info(self, channel: _Channel) -> ChannelInfo:
        return ChannelInfo(
            id=channel.id,
            state=channel.state,
            created_at=channel.created_at,
            updated_at=channel.updated_at,
            messages=channel.count,
            last_event_id=channel.last_event_id,
            ttl=max(0, int(channel.expires_at - time.monotonic())),
            writer_timeout=channel.writer_timeout,
        )

    def held_channels(self) -> int:
        return len(self._channels)  # expired ones too, until swept: they still take memory

    @timed
    async def create(self, channel_id: str, *, writer_timeout: int = 0) -> ChannelInfo:
        if self._get(channel_id) is not None:
            raise ChannelExists(channel_id)
        now = _now_ms()
        channel = _Channel(
            id=channel_id,
            created_at=now,
            updated_at=now,
            expires_at=time.monotonic() + self.limits.idle_ttl,
            events=deque(),
            writer_timeout=writer_timeout,
        )
        channel.renew_lease()
        self._channels[channel_id] = channel
        return self._info(channel)

    async def _append(
        self,
        channel_id: str,
        items: Sequence[tuple[EventType, bytes]],
        *,
        writer: str | None,
        seq: int | None,
    ) -> AppendResult:
        channel = self._get(channel_id)
        if channel is None:
            raise ChannelNotFound(channel_id)
        if writer is not None and seq is not None:
            last_seq, last_id = channel.writers.get(writer, (0, None))
            if seq <= last_seq:
                return AppendResult(ids=[], duplicate=True, last_event_id=last_id)
        if channel.state == "cancelled":
            raise ChannelCancelled(channel_id)
        if channel.state != "open":
            raise ChannelEnded(channel_id)
        result = self._store(channel, items)
        if writer is not None and seq is not None:
            channel.writers[writer] = (seq + len(items) - 1, channel.last_event_id)
        return result

    async def _cancel(self, channel_id: str, payload: bytes) -> AppendResult:
        channel = self._get(channel_id)
        if channel is None:
            raise ChannelNotFound(channel_id)
        if channel.state == "cancelled":
            return AppendResult(ids=[], duplicate=True, last_event_id=channel.last_event_id)
        if channel.state != "open":
            raise ChannelEnded(channel_id)
        return self._store(channel, [("cancelled", payload)])

    @timed
    async def heartbeat(self, channel_id: str) -> None:
        channel = self._get(channel_id)
        if channel is None:
            raise ChannelNotFound(channel_id)
        if channel.state == "cancelled":
            raise ChannelCancelled(channel_id)
        if channel.state != "open":
            raise ChannelEnded(channel_id)
        channel.renew_lease()
        channel.expires_at = time.monotonic() + self.limits.idle_ttl

    @timed
    async def expire_writers(self, channel_ids: Sequence[str]) -> list[str]:
        now = _now_ms()
        ended: list[str] = []
        for channel_id in channel_ids:
            channel = self._get(channel_id)
            if (
                channel is not None
                and channel.state == "open"
                and channel.writer_timeout > 0
                and channel.writer_deadline <= now
            ):
                payload = pack(writer_timeout_error(channel.writer_timeout))
                self._store(channel, [("error", payload)])
                ended.append(channel_id)
        return ended

    def _store(self, channel: _Channel, items: Sequence[tuple[EventType, bytes]]) -> AppendResult:
        """Append to an open channel, apply a terminal event's state, tell the watchers."""
        new_events = [Event(channel.next_id(), kind, payload) for kind, payload in items]
        for event in new_events:
            if len(channel.events) >= self.limits.max_messages:
                channel.dropped_until = channel.events.popleft().key
            channel.events.append(event)
        channel.count += len(new_events)
        channel.updated_at = _now_ms()
        if new_events[-1].terminal:
            channel.state = "cancelled" if new_events[-1].type == "cancelled" else "ended"
            channel.expires_at = time.monotonic() + self.limits.retention
        else:
            channel.expires_at = time.monotonic() + self.limits.idle_ttl
            channel.renew_lease()
        self.store.publish(channel.id, new_events)
        return AppendResult(
            ids=[event.id for event in new_events],
            duplicate=False,
            last_event_id=channel.last_event_id,
        )

    @timed
    async def read(self, channel_id: str, after: str | None, count: int) -> ReadResult:
        channel = self._get(channel_id)
        if channel is None:
            raise ChannelNotFound(channel_id)
        events = list(channel.events)
        gap = None
        if after is None:
            position = 0
            if channel.dropped_until is not None and events:
                gap = events[0].id
        else:
            after_key = parse_event_id(after)
            position = _first_after(events, after_key)
            if channel.dropped_until is not None and after_key < channel.dropped_until and events:
                gap = events[0].id
        page = events[position : position + count]
        return ReadResult(
            events=page,
            gap=gap,
            ended=channel.state != "open",
            last_event_id=channel.last_event_id,
            more=position + count < len(events),
        )

    @timed
    async def info(self, channel_id: str) -> ChannelInfo | None:
        channel = self._get(channel_id)
        return None if channel is None else self._info(channel)

    @timed
    async def delete(self, channel_id: str) -> bool:
        if self._get(channel_id) is None:
            return False
        self._drop(channel_id)
        return True

    @timed
    async def channels(self, limit: int = 1000) -> list[ChannelInfo]:
        live = [c for c in list(self._channels.values()) if self._get(c.id) is not None]
        live.sort(key=lambda c: c.created_at, reverse=True)
        return [self._info(c) for c in live[:limit]]

    @timed
    async def watch(self, channel_id: str) -> None:
        self._watched.add(channel_id)

    @timed
    async def unwatch(self, channel_id: str) -> None:
        self._watched.discard(channel_id)


def _first_after(events: Sequence[Event], key: tuple[int, int]) -> int:
    """Index of the first event whose id is above `key` (binary search: ids are sorted)."""
    low, high = 0, len(events)
    while low < high:
        middle = (low + high) // 2
        if events[middle].key <= key:
            low = middle + 1
        else:
            high = middle
    return low
