"""The storage engine interface shared by the memory and Redis engines.

An engine stores channels (state + ordered events) and tells the broker's hub about new events
for the channels it watches. Both engines have the same semantics; tests run one suite against each.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from broker.events import TERMINAL_TYPES, Event, EventType, pack
from broker.vocabulary import ChannelState

# Events per append: one append is one Lua call (or one loop on the event loop), which blocks every
# other client of that Redis (or this broker) while it runs.
MAX_BATCH_EVENTS = 1000

# Called by the engine with new events of one watched channel, in id order. `None` means the
# channel disappeared (deleted or expired): its subscribers must be disconnected.
Deliver = Callable[[str, Sequence[Event] | None], None]


class EngineObserver(Protocol):
    """Told how long engine operations (and, on Redis, single commands) take: for /metrics."""

    def operation(self, engine: str, name: str, seconds: float) -> None: ...

    def command(self, name: str, seconds: float) -> None: ...


class EngineError(Exception):
    """Base of the engine's domain errors (they map to HTTP errors one to one)."""


class ChannelExists(EngineError):
    pass


class ChannelNotFound(EngineError):
    pass


class ChannelEnded(EngineError):
    pass


class ChannelCancelled(ChannelEnded):
    """A write to a channel a reader cancelled (an `end`/`error` raises plain ChannelEnded)."""


MAX_CANCEL_REASON = 200  # characters


def writer_timeout_error(writer_timeout: int) -> dict[str, str]:
    """The data of the `error` event that ends a channel whose writer lease ran out."""
    return {
        "code": "writer_timeout",
        "message": f"The backend wrote nothing for {writer_timeout} s.",
    }


_E = TypeVar("_E", bound="Engine")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def timed(
    method: Callable[Concatenate[_E, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_E, _P], Coroutine[Any, Any, _R]]:
    """Report the method's latency to the engine's observer, if it has one."""
    operation = method.__name__

    async def wrapper(self: _E, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        observer = self._observer
        if observer is None:
            return await method(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        finally:
            observer.operation(self.name, operation, time.perf_counter() - start)

    functools.update_wrapper(wrapper, method)
    return wrapper


# The event types a writer may append; `cancelled` only comes from Engine.cancel().
WRITABLE_TYPES = frozenset({"message", "end", "error"})


def check_batch(
    items: Sequence[tuple[EventType, bytes]], writer: str | None, seq: int | None
) -> None:
    """Refuse a batch no engine may store (ValueError). Shared by every engine and by
    redis_layout.append_events, so a batch means the same thing whoever appends it."""
    if not items:
        raise ValueError("a batch holds at least one event")
    if len(items) > MAX_BATCH_EVENTS:
        raise ValueError(f"at most {MAX_BATCH_EVENTS} events per append, not {len(items)}")
    for n, (kind, payload) in enumerate(items):
        if kind not in WRITABLE_TYPES:
            raise ValueError(f"unknown event type {kind!r}")
        if kind in TERMINAL_TYPES and n != len(items) - 1:
            raise ValueError("only the last event of a batch may be 'end' or 'error'")
        if not isinstance(payload, bytes):
            raise ValueError("event data must be msgpack bytes")
    if (writer is None) != (seq is None):
        raise ValueError("give a writer id and a seq together, or neither")
    if writer is not None and (not isinstance(writer, str) or not writer):
        raise ValueError("the writer id must be a non-empty string")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 1):
        raise ValueError("seq must be an integer >= 1")


@dataclass(frozen=True, slots=True)
class Limits:
    idle_ttl: int = 3600  # seconds an open channel lives after its last write (or its creation)
    retention: int = 3600  # seconds an ended channel stays readable
    max_messages: int = 10_000  # events kept per channel; the oldest are dropped first


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    id: str
    state: ChannelState
    created_at: int  # ms since the epoch
    updated_at: int
    messages: int  # events ever appended (including a terminal one)
    last_event_id: str | None
    ttl: int  # seconds until it expires (-1 unknown)
    writer_timeout: int = 0  # seconds of the writer lease, 0: none


@dataclass(frozen=True, slots=True)
class AppendResult:
    ids: list[str]
    duplicate: bool
    last_event_id: str | None


@dataclass(frozen=True, slots=True)
class ReadResult:
    events: list[Event]
    # The oldest retained id when events after the reader's position were dropped, else None.
    gap: str | None
    ended: bool
    last_event_id: str | None = None  # of the channel, not of this page
    more: bool = field(default=False)  # True when `count` cut the page short


class Engine(abc.ABC):
    """Channel storage + live notification. One instance per broker process.

    Public operations are decorated with `@timed`, so an observer given to `observe()` learns
    their latency without wrapping the engine from outside.
    """

    name: str

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._deliver: Deliver | None = None
        self._observer: EngineObserver | None = None

    def observe(self, observer: EngineObserver | None) -> None:
        """Report operation latencies to `observer` (None: stop)."""
        self._observer = observer

    def stats(self) -> dict[str, int]:
        """Counters and gauges this engine keeps anyway, read at scrape time.

        Known keys: `channels_open`, `channels_ended` (engines that can count their channels
        for free), `feed_reconnects`, `feed_caught_up`, `feed_connections` (engines with a
        live feed from another process).
        """
        return {}

    async def start(self, deliver: Deliver) -> None:
        """Connect and begin delivering events of watched channels to `deliver`."""
        self._deliver = deliver

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create(self, channel_id: str, *, writer_timeout: int = 0) -> ChannelInfo:
        """Create an open channel. Raises ChannelExists.

        `writer_timeout` > 0 gives it a writer lease: every append and heartbeat() moves its
        deadline to now + writer_timeout seconds, and expire_writers() ends it with an `error`
        event once the deadline passed. 0: no lease.
        """

    @timed
    async def append(
        self,
        channel_id: str,
        items: Sequence[tuple[EventType, bytes]],
        *,
        writer: str | None = None,
        seq: int | None = None,
    ) -> AppendResult:
        """Append events atomically. Only the last item may be terminal (end/error).

        With a writer id, the batch takes the seqs `seq … seq+len-1`; a batch whose `seq` is not
        above the writer's last stored seq is a duplicate and stores nothing.
        Raises ValueError (a bad batch: nothing stored), ChannelNotFound, ChannelEnded,
        ChannelCancelled (the channel was cancelled; a duplicate is still answered as one).
        """
        check_batch(items, writer, seq)
        return await self._append(channel_id, items, writer=writer, seq=seq)

    @abc.abstractmethod
    async def _append(
        self,
        channel_id: str,
        items: Sequence[tuple[EventType, bytes]],
        *,
        writer: str | None,
        seq: int | None,
    ) -> AppendResult:
        """Store a batch that check_batch() accepted."""

    @timed
    async def cancel(self, channel_id: str, reason: str | None = None) -> AppendResult:
        """Append the terminal `cancelled` event (data `{"reason": reason}`) to an open channel
        and make its state `cancelled`. Cancelling a cancelled channel stores nothing and
        answers `duplicate=True` with its last id. Raises ValueError (a bad reason),
        ChannelNotFound, ChannelEnded (it ended by end/error)."""
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_CANCEL_REASON):
            raise ValueError(f"a cancel reason is a string of at most {MAX_CANCEL_REASON} chars")
        return await self._cancel(channel_id, pack({"reason": reason}))

    @abc.abstractmethod
    async def _cancel(self, channel_id: str, payload: bytes) -> AppendResult:
        """Store the `cancelled` event with this msgpack payload (see cancel())."""

    @abc.abstractmethod
    async def heartbeat(self, channel_id: str) -> None:
        """A writer's sign of life: renew the writer lease (and the idle TTL) of an open
        channel. Raises ChannelNotFound, ChannelEnded, ChannelCancelled."""

    @abc.abstractmethod
    async def expire_writers(self, channel_ids: Sequence[str]) -> list[str]:
        """End, with the terminal `error` event writer_timeout_error(N), each open channel
        among these whose writer lease ran out (atomically per channel: a write or heartbeat
        that lands first wins). Returns the ids it ended; unknown ids are skipped."""

    @abc.abstractmethod
    async def read(self, channel_id: str, after: str | None, count: int) -> ReadResult:
        """Events strictly after `after` (None: from the start). Raises ChannelNotFound."""

    @abc.abstractmethod
    async def info(self, channel_id: str) -> ChannelInfo | None: ...

    @abc.abstractmethod
    async def delete(self, channel_id: str) -> bool: ...

    @abc.abstractmethod
    async def channels(self, limit: int = 1000) -> list[ChannelInfo]:
        """Live channels, newest first."""

    @abc.abstractmethod
    async def watch(self, channel_id: str) -> None:
        """Start delivering this channel's new events. Returns once delivery is guaranteed for
        every event appended after the call returns."""

    @abc.abstractmethod
    async def unwatch(self, channel_id: str) -> None: ...

    async def ping(self) -> None:
        """Raise when the storage cannot be reached (for /readyz); in-process storage always can."""
        return None

    def held_channels(self) -> int | None:
        """How many channels this process holds in its own memory (for --max-channels), or None
        when storage is elsewhere (Redis) and only the open rate is capped."""
        return None

    async def share_readers(self, counts: Mapping[str, Mapping[str, int]], ttl: float) -> None:
        """Publish this process's readers per channel (transport -> count; empty: none left) for
        other broker processes, valid `ttl` seconds. Engines without other processes ignore it."""
        return None

    async def readers_elsewhere(self, channel_id: str) -> dict[str, int] | None:
        """Readers of the channel on OTHER broker processes, by transport (None: this engine
        cannot know; there are none it shares storage with)."""
        return None

    @timed
    async def exists_many(self, channel_ids: Sequence[str]) -> list[bool]:
        """Which of these channels still exist (used to notice expiry of watched channels)."""
        return [await self.info(cid) is not None for cid in channel_ids]
