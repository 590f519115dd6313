"""The reconnecting reader: resume by last event id, dedupe, backoff, transport and broker
fallback.

One `Reader` follows one channel across any number of connections. It remembers the id of the
last event it handed out and resumes after it, so a reconnect (or a switch of transport) neither
loses nor repeats an event; an event whose id is not after that position is a duplicate and is
dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Final, Literal

import aiohttp

from broker.vocabulary import TRANSPORTS as WIRE_TRANSPORTS
from broker.vocabulary import ChannelState
from broker.vocabulary import Transport as WireTransport
from client_sdk.backoff import Backoff
from client_sdk.errors import (
    BrokerError,
    ChannelErrorEvent,
    ReconnectsExhausted,
    TransportError,
)
from client_sdk.ids import is_after
from client_sdk.models import Control, Event, GapInfo, ReconnectInfo
from client_sdk.transports import AUTO_ORDER, TRANSPORTS, Target, Timing

log = logging.getLogger("client_sdk")

# The broker's transport names (broker.vocabulary), or `auto`: SSE, then WebSocket, then poll.
TransportName = Literal["auto"] | WireTransport
TRANSPORT_NAMES: Final[tuple[TransportName, ...]] = ("auto", *WIRE_TRANSPORTS)

OnReconnect = Callable[[ReconnectInfo], None]
OnGap = Callable[[GapInfo], None]


class Reader:
    """Reads one channel until its `end` or `cancelled` (returns) or `error` (raises
    ChannelErrorEvent).

    `events()` may be called again after the caller stopped iterating: it resumes after the
    last event it yielded. With several targets (broker URLs) it fails over between them: at
    once when a broker cannot be reached, is draining (503) or is shutting down (`reconnect`
    with reason `shutdown`), and after every transport failed on the current one.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        targets: Target | Sequence[Target],
        *,
        transport: TransportName | str = "auto",
        last_event_id: str | None = None,
        timing: Timing,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        on_reconnect: OnReconnect | None = None,
        on_gap: OnGap | None = None,
    ) -> None:
        if transport not in TRANSPORT_NAMES:
            raise ValueError(f"unknown transport {transport!r}; use one of {TRANSPORT_NAMES}")
        self._session = session
        self._targets: Sequence[Target] = (
            (targets,) if isinstance(targets, Target) else tuple(targets)
        )
        if not self._targets:
            raise ValueError("a reader needs at least one broker URL")
        self._broker = 0
        self._candidates: Sequence[WireTransport] = (
            AUTO_ORDER if transport == "auto" else (transport,)
        )
        self._index = 0
        self._timing = timing
        # A copy: the backoff counts attempts, and one given to several readers must not mix them.
        self._backoff = replace(backoff, attempt=0) if backoff is not None else Backoff()
        self._max_retries = max_retries
        self._on_reconnect = on_reconnect
        self._on_gap = on_gap
        self.last_event_id = last_event_id
        self.state: ChannelState = "open"
        self.end_data: object = None
        self.cancel_reason: str | None = None
        self.error: ChannelErrorEvent | None = None
        self.reconnects = 0
        self.gaps: list[GapInfo] = []

    @property
    def ended(self) -> bool:
        """True once the channel ended, failed or was cancelled: nothing more will come."""
        return self.state != "open"

    @property
    def transport(self) -> WireTransport:
        """The transport in use (or about to be tried)."""
        return self._candidates[self._index]

    @property
    def target(self) -> Target:
        """The broker (and token) in use, or about to be tried."""
        return self._targets[self._broker]

    @property
    def targets(self) -> Sequence[Target]:
        return self._targets

    @property
    def heartbeat(self) -> float:
        """The broker's heartbeat interval, as announced by its last answer (else as given)."""
        return self._timing.heartbeat

    def _next_broker(self) -> bool:
        if len(self._targets) < 2:
            return False
        self._broker = (self._broker + 1) % len(self._targets)
        return True

    async def events(self) -> AsyncIterator[Event]:
        """Message events, each exactly once and in order, until the channel ends."""
        if self.error is not None:
            raise self.error
        failures = 0  # consecutive attempts that delivered nothing
        # (broker, transport) pairs that failed since the last progress: moving to one not
        # tried yet needs no wait; only when all failed does the backoff apply.
        tried: set[tuple[int, str]] = set()
        loop = asyncio.get_running_loop()
        while not self.ended:
            name = self.transport
            target = self.target
            progressed = False
            broker_asked: str | None = None
            error: BaseException | None = None
            started = loop.time()
            try:
                frames = TRANSPORTS[name].frames(
                    self._session, target, self.last_event_id, self._timing
                )
                async with aclosing(frames) as stream:
                    async for frame in stream:
                        if isinstance(frame, Control) and frame.type == "interval":
                            self._timing = replace(self._timing, heartbeat=float(frame.value or 0))
                            continue
                        progressed = True
                        if isinstance(frame, Event):
                            if not is_after(frame.id, self.last_event_id):
                                continue  # already delivered (replay overlap or a duplicate)
                            self.last_event_id = frame.id
                            if frame.type == "message":
                                yield frame
                            else:
                                self._terminal(frame)
                                return
                        elif frame.type == "ended":
                            self.state = "ended"
                            return
                        elif frame.type == "gap":
                            self._gap(frame)
                        elif frame.type == "reconnect":
                            broker_asked = frame.value or "unspecified"
                            break
            except BrokerError as exc:
                if not exc.retriable:
                    raise
                error = exc
                if exc.status == 503:  # draining for a shutdown: another broker can serve
                    self._next_broker()
            except TransportError as exc:
                error = exc
                if exc.unreachable and self._next_broker():
                    pass
                elif exc.before_first_byte and len(self._candidates) > 1:
                    # Blocked or unsupported on this path: try the next transport, and the next
                    # broker once every transport failed on this one.
                    self._index = (self._index + 1) % len(self._candidates)
                    if self._index == 0:
                        self._next_broker()
                elif exc.before_first_byte:
                    self._next_broker()
            if broker_asked == "shutdown":
                self._next_broker()
            # A connection that stayed up for a while was healthy even if it carried nothing.
            if progressed or loop.time() - started >= self._timing.idle():
                failures = 0
                tried.clear()
                self._backoff.reset()
            elif broker_asked is None:
                failures += 1
                tried.add((self._targets.index(target), name))
            if self._max_retries is not None and failures > self._max_retries:
                raise ReconnectsExhausted(failures, error)
            moved = (self.target, self.transport) != (target, name)
            if broker_asked is not None:
                delay = 0.0  # the protocol says: reconnect at once with the last id
                reason = f"broker asked to reconnect ({broker_asked})"
            elif error is not None and moved and (self._broker, self.transport) not in tried:
                delay = 0.0  # fail over to a broker or transport not tried yet, without waiting
                reason = f"{error}; trying {self.transport} at {self.target.broker_url}"
            else:
                delay = self._backoff.next_delay()
                if isinstance(error, BrokerError) and error.retry_after is not None:
                    delay = max(delay, error.retry_after)
                reason = str(error) if error is not None else f"{name}: stream closed"
            self.reconnects += 1
            info = ReconnectInfo(
                attempt=max(failures, 1),
                delay=delay,
                reason=reason,
                transport=self.transport,
                last_event_id=self.last_event_id,
                error=error,
                broker=str(self.target.broker_url),
            )
            log.info("reconnecting in %.2fs: %s", delay, reason)
            if self._on_reconnect is not None:
                self._on_reconnect(info)
            if delay > 0:
                await asyncio.sleep(delay)

    def _terminal(self, event: Event) -> None:
        if event.type == "end":
            self.state, self.end_data = "ended", event.data
        elif event.type == "cancelled":
            self.state = "cancelled"
            reason = event.data.get("reason") if isinstance(event.data, dict) else None
            self.cancel_reason = reason if isinstance(reason, str) else None
        else:
            self.state = "ended"
            self.error = ChannelErrorEvent(event.data, event.id)
            raise self.error

    def _gap(self, frame: Control) -> None:
        info = GapInfo(after=self.last_event_id, first_id=frame.value or "")
        self.gaps.append(info)
        log.warning("history lost after %s: replay starts at %s", info.after, info.first_id)
        if self._on_gap is not None:
            self._on_gap(info)
