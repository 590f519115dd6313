"""The storage engine interface shared by the memory and Redis engines.

An engine stores channels (state + ordered events) and tells the broker's relay about new events
for the channels it watches. Both engines have the same semantics; tests run one suite against each.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from broker.events import Event, EventType

# Events per append: one append is one Lua call (or one loop on the event loop), which blocks every
# other client of that Redis (or this broker) while it runs.
MAX_BATCH_EVENTS = 1000

# Called by the engine with new events of one watched channel, in id order. `None` means the
# channel disappeared (deleted or expired): its subscribers must be disconnected.
Deliver = Callable[[str, Sequence[Event] | None], None]


class EngineError(Exception):
    """Base of the engine's domain errors (they map to HTTP errors one to one)."""


class ChannelExists(EngineError):
    pass


class ChannelNotFound(EngineError):
    pass


class ChannelEnded(EngineError):
    pass


@dataclass(frozen=True, slots=True)
class Limits:
    idle_ttl: int = 3600  # seconds an open channel lives after its last write (or its creation)
    retention: int = 3600  # seconds an ended channel stays readable
    max_messages: int = 10_000  # events kept per channel; the oldest are dropped first


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    id: str
    state: str  # "open" | "ended"
    created_at: int  # ms since the epoch
    updated_at: int
    messages: int  # events ever appended (including a terminal one)
    last_event_id: str | None
    ttl: int  # seconds until it expires (-1 unknown)


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
    """Channel storage + live notification. One instance per broker process."""

    name: str

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        """Connect and begin delivering events of watched channels to `deliver`."""
        self._deliver = deliver

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create(self, channel_id: str) -> ChannelInfo:
        """Create an open channel. Raises ChannelExists."""

    @abc.abstractmethod
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
        Raises ChannelNotFound, ChannelEnded.
        """

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

    async def exists_many(self, channel_ids: Sequence[str]) -> list[bool]:
        """Which of these channels still exist (used to notice expiry of watched channels)."""
        return [await self.info(cid) is not None for cid in channel_ids]
