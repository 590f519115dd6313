"""How each reader transport frames what it sends: events, heartbeats, a gap, a reconnect notice
and the close. One `Framer` per streaming reader; `broker.transports.reading.forward` is the one
loop that drives any of them.

A framer has two sides:
- socket bytes (`frame`, `heartbeat`): what the hub writes straight to the socket while the
  handler is parked, heartbeats included (one timer for all readers, see Hub). `kind` names the
  framing, so the hub frames an event batch once per kind, not once per reader;
- the handler's own writes (the async methods), through aiohttp, which keeps flow control and
  the closing guard for the slow path: replay, queued events, the end of the stream.

Long-poll answers once, with a JSON body (`poll_body`); it needs no framer.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import ClassVar

from aiohttp import web

from broker.events import Event, dumps, ws_text_frame
from broker.hub import Socket, reset
from broker.vocabulary import ReconnectReason

RETRY = b"retry: 1000\n\n"  # tells EventSource to reconnect after 1 s
SSE_HEARTBEAT = b": hb\n\n"
WS_PING = '{"type":"ping"}'
WS_CLOSE_TIMEOUT = 5.0  # seconds the last frames and the close handshake may take


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Framer(abc.ABC):
    __slots__ = ("socket",)

    kind: ClassVar[str]  # one per distinct socket framing
    heartbeat: ClassVar[bytes]  # socket bytes of one heartbeat

    def __init__(self, socket: Socket) -> None:
        self.socket = socket

    @abc.abstractmethod
    def frame(self, events: Sequence[Event]) -> bytes:
        """Socket bytes of these (non-terminal) events."""

    @abc.abstractmethod
    async def start(self, gap: str | None) -> None:
        """The stream's head; `gap` is the oldest retained id when events were dropped."""

    def started(self) -> None:  # most framings keep nothing for the start only
        """The head is written: drop what only the start needed (a long-lived reader should
        hold as little as possible)."""
        return

    @abc.abstractmethod
    async def events(self, events: Sequence[Event]) -> None: ...

    @abc.abstractmethod
    async def reconnect(self, reason: ReconnectReason) -> None:
        """Tell the reader to resume from its last id, and close."""

    @abc.abstractmethod
    async def end(self, event: Event) -> None:
        """Close after the terminal `event` was sent."""


class SSEFramer(Framer):
    """SSE (`/events`) and chunked HTTP (`/stream`): the same text; socket bytes are HTTP/1.1
    chunks, or raw for an HTTP/1.0 reader (its stream ends with the connection)."""

    __slots__ = ("response",)
    kind: ClassVar[str] = "sse-chunked"
    heartbeat: ClassVar[bytes] = http_chunk(SSE_HEARTBEAT)

    def __init__(self, socket: Socket, response: web.StreamResponse) -> None:
        super().__init__(socket)
        self.response = response

    def frame(self, events: Sequence[Event]) -> bytes:
        if len(events) == 1:
            return events[0].sse_chunk
        return http_chunk(b"".join(event.sse for event in events))

    async def start(self, gap: str | None) -> None:
        head = RETRY
        if gap is not None:
            head += f"event: gap\ndata: {dumps({'first_id': gap})}\n\n".encode()
        await self.response.write(head)

    def started(self) -> None:
        # The headers were sent with the head; aiohttp reads them no more (the body's end
        # only needs the chunked flag), and an idle reader holds them for hours.
        self.response.headers.clear()

    async def events(self, events: Sequence[Event]) -> None:
        await self.response.write(b"".join(event.sse for event in events))

    async def reconnect(self, reason: ReconnectReason) -> None:
        if reason != "client_closed":
            data = dumps({"reason": reason})
            await self.response.write(f"event: reconnect\ndata: {data}\n\n".encode())

    async def end(self, event: Event) -> None:
        pass  # the handler returns; aiohttp ends the chunked body


class RawSSEFramer(SSEFramer):
    __slots__ = ()
    kind: ClassVar[str] = "sse"
    heartbeat: ClassVar[bytes] = SSE_HEARTBEAT

    def frame(self, events: Sequence[Event]) -> bytes:
        return b"".join(event.sse for event in events)


class WSFramer(Framer):
    """WebSocket (`/ws`): one JSON text frame per event; an application-level ping the client's
    watchdog can see (mini-program socket APIs hide protocol pings)."""

    __slots__ = ("ws",)
    kind: ClassVar[str] = "ws"
    heartbeat: ClassVar[bytes] = ws_text_frame(WS_PING)

    def __init__(self, socket: Socket, ws: web.WebSocketResponse) -> None:
        super().__init__(socket)
        self.ws = ws

    def frame(self, events: Sequence[Event]) -> bytes:
        if len(events) == 1:
            return events[0].ws_frame
        return b"".join(event.ws_frame for event in events)

    async def start(self, gap: str | None) -> None:
        if gap is not None:
            await self.ws.send_str(dumps({"type": "gap", "first_id": gap}))

    def started(self) -> None:
        self.ws.headers.clear()  # sent with the 101; nothing reads them again

    async def events(self, events: Sequence[Event]) -> None:
        for event in events:
            await self.ws.send_str(event.ws)

    async def reconnect(self, reason: ReconnectReason) -> None:
        if reason != "client_closed":
            notice = dumps({"type": "reconnect", "reason": reason})
            await self._goodbye(1012 if reason == "shutdown" else 1013, b"", notice)

    async def end(self, event: Event) -> None:
        await self._goodbye(1000, event.type.encode())

    async def _goodbye(self, code: int, message: bytes, notice: str | None = None) -> None:
        """The last frames and the close handshake, within WS_CLOSE_TIMEOUT: a client that
        stopped reading (a slow consumer, a frozen app) would otherwise hold the handler, the
        connection and its subscription forever on a write that never drains."""
        try:
            async with asyncio.timeout(WS_CLOSE_TIMEOUT):
                if notice is not None:
                    await self.ws.send_str(notice)
                await self.ws.close(code=code, message=message)
        except TimeoutError:
            reset(self.socket)  # drops the unsent bytes; close() would wait for them


def poll_body(events: Sequence[Event], last: str | None, ended: bool, gap: str | None) -> str:
    """A long-poll answer: the events as the WebSocket's JSON objects, and where to go on."""
    return (
        '{"events":[' + ",".join(event.ws for event in events) + "],"
        f'"last_event_id":{dumps(last)},"ended":{dumps(ended)},'
        f'"gap":{dumps(None if gap is None else {"first_id": gap})}}}'
    )
