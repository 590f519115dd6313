"""What the reader gets from a transport, and what the SDK hands to its user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

EventType = Literal["message", "end", "error", "cancelled"]
ControlType = Literal["gap", "reconnect", "heartbeat", "ended", "interval"]


@dataclass(frozen=True, slots=True)
class Event:
    """A channel event: `message`, or a terminal `end`, `error` or `cancelled`."""

    id: str
    type: EventType
    data: Any

    @property
    def terminal(self) -> bool:
        return self.type != "message"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": self.data}


@dataclass(frozen=True, slots=True)
class Control:
    """A transport notice that is not a channel event.

    - `gap`: history before `first_id` was dropped (`value` is the first retained id);
    - `reconnect`: the broker is closing this stream, reconnect at once (`value` is the reason);
    - `heartbeat`: a WebSocket ping (SSE comments never reach the reader);
    - `interval`: the broker announced its heartbeat interval (`value`, seconds) in the
      `Unbroken-Heartbeat` header of a streaming answer;
    - `ended`: the channel has ended and nothing follows the reader's position (SSE 204,
      WebSocket close 1000 before any frame, long-poll `ended` with no events).
    """

    type: ControlType
    value: str | None = None


Frame = Event | Control


@dataclass(frozen=True, slots=True)
class ReconnectInfo:
    """Passed to `on_reconnect` before the reader waits `delay` seconds and reconnects."""

    attempt: int  # consecutive attempts without progress, 1 for the first retry
    delay: float
    reason: str  # human readable: what broke
    transport: str  # the transport of the next attempt (sse, chunked, ws, poll)
    last_event_id: str | None  # the position the next attempt resumes after
    error: BaseException | None  # None when the broker asked for the reconnect
    broker: str = ""  # the broker URL of the next attempt (several given: failover)


@dataclass(frozen=True, slots=True)
class GapInfo:
    """History was lost: events between the reader's position and `first_id` are gone."""

    after: str | None
    first_id: str
