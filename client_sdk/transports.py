"""The three (four) ways to read a channel: SSE, chunked HTTP, WebSocket and long-poll.

A transport turns one connection into `Frame`s and knows nothing about reconnecting: it returns
when the broker closes the stream and raises `TransportError` (reconnect) or `BrokerError`
(the broker said no). The reader (`reader.py`) decides what happens next. Each read is guarded
by a timeout, never the whole stream, so a slow consumer is not mistaken for a dead connection.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import aiohttp
from yarl import URL

from broker.vocabulary import Transport as WireTransport
from client_sdk.errors import BrokerError, ProtocolViolation, TransportError, WatchdogTimeout
from client_sdk.ids import is_event_id
from client_sdk.models import Control, Event, Frame
from client_sdk.sse import SSEMessage, SSEParser

_EVENT_TYPES: Final = frozenset({"message", "end", "error", "cancelled"})
HEARTBEAT_HEADER: Final = "Unbroken-Heartbeat"
WATCHDOG_FACTOR: Final = 2.5  # missing two heartbeats (plus slack) means the connection is dead
_CONNECTION_ERRORS: Final = (aiohttp.ClientError, OSError)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a channel is read from and with which token."""

    broker_url: URL
    channel_id: str
    token: str

    def url(self, endpoint: str) -> URL:
        # yarl quotes the id, which may contain `:` and `.` (client-chosen names).
        return self.broker_url / "v1" / "channels" / self.channel_id / endpoint

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True, slots=True)
class Timing:
    heartbeat: float  # the broker's heartbeat interval as far as the reader knows it
    # No byte (heartbeats included) for this long: the connection is dead. None: follow the
    # broker, WATCHDOG_FACTOR heartbeats, as announced by the answer itself when it says.
    idle_timeout: float | None
    first_byte_timeout: float  # a connection that sends nothing this long is blocked somewhere
    poll_timeout: int  # the long-poll `timeout` parameter (the broker caps it at 55)
    # SSE/chunked `max_duration`: the broker ends each stream after that many seconds (with a
    # `reconnect` event); for networks that cut long responses.
    max_duration: float | None = None

    def idle(self, announced: float | None = None) -> float:
        if self.idle_timeout is not None:
            return self.idle_timeout
        return WATCHDOG_FACTOR * (announced if announced is not None else self.heartbeat)


def announced_heartbeat(headers: Mapping[str, str] | None) -> float | None:
    """The broker's heartbeat from the `Unbroken-Heartbeat` header (None when absent/bad)."""
    value = headers.get(HEARTBEAT_HEADER) if headers is not None else None
    try:
        beat = float(value) if value is not None else None
    except ValueError:
        return None
    # A nonsense value must not make the watchdog fire at once or never.
    return beat if beat is not None and 0.05 <= beat <= 3600 else None


def _unreachable(exc: BaseException) -> bool:
    """Nothing listens there (refused, no route, unknown host): another broker may answer."""
    return isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)


class Transport(abc.ABC):
    name: ClassVar[WireTransport]  # the broker's name (broker.vocabulary), reported to users
    endpoint: ClassVar[str]  # the reader route: /v1/channels/{id}/<endpoint>

    @abc.abstractmethod
    def frames(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        last_event_id: str | None,
        timing: Timing,
    ) -> AsyncGenerator[Frame, None]:
        """Frames of one connection (or, for long-poll, one chain of requests)."""


async def broker_error(resp: aiohttp.ClientResponse) -> BrokerError:
    """The typed error of an error answer, whether or not it has the broker's JSON body."""
    retry_after = _retry_after(resp.headers)
    try:
        text = await resp.text(errors="replace")
    except _CONNECTION_ERRORS:
        text = ""
    try:
        body = json.loads(text)
        error = body["error"]
        return BrokerError(
            resp.status, str(error["code"]), str(error["message"]), retry_after=retry_after
        )
    except (ValueError, KeyError, TypeError):
        # Not the broker's answer (a proxy's HTML page, say): keep what it said, briefly.
        snippet = " ".join(text.split())[:200] or resp.reason or "no body"
        return BrokerError(resp.status, "http_error", snippet, retry_after=retry_after)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to the backoff


def parse_event(raw: Any) -> Event:
    """An event from its JSON form `{id, type, data}` (long-poll items, WebSocket frames)."""
    if not isinstance(raw, dict):
        raise ProtocolViolation(f"an event must be a JSON object, got {raw!r:.100}")
    event_id, event_type = raw.get("id"), raw.get("type")
    if event_type not in _EVENT_TYPES:
        raise ProtocolViolation(f"unknown event type {event_type!r:.50}")
    if not isinstance(event_id, str) or not is_event_id(event_id):
        raise ProtocolViolation(f"event without a valid id: {event_id!r:.50}")
    return Event(event_id, event_type, raw.get("data"))


def _sse_frame(message: SSEMessage) -> Frame | None:
    try:
        data = json.loads(message.data)
    except ValueError as exc:
        raise ProtocolViolation(f"SSE data is not JSON: {message.data!r:.100}") from exc
    if message.event in _EVENT_TYPES:
        if message.id is None or not is_event_id(message.id):
            raise ProtocolViolation(f"SSE {message.event} event without a valid id")
        return Event(message.id, message.event, data)  # type: ignore[arg-type]
    if message.event == "gap":
        first_id = data.get("first_id") if isinstance(data, dict) else None
        return Control("gap", first_id if isinstance(first_id, str) else None)
    if message.event == "reconnect":
        reason = data.get("reason") if isinstance(data, dict) else None
        return Control("reconnect", str(reason) if reason is not None else None)
    return None  # an event type from a newer protocol: ignored, as EventSource would


class SSETransport(Transport):
    """`GET /events`: Server-Sent Events."""

    name: ClassVar[WireTransport] = "sse"
    endpoint = "events"

    async def frames(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        last_event_id: str | None,
        timing: Timing,
    ) -> AsyncGenerator[Frame, None]:
        params = {"last_event_id": last_event_id} if last_event_id else {}
        if timing.max_duration is not None:
            params["max_duration"] = f"{timing.max_duration:g}"
        headers = {**target.headers, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        try:
            async with asyncio.timeout(timing.first_byte_timeout):
                resp = await session.get(
                    target.url(self.endpoint),
                    params=params,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                )
        except TimeoutError as exc:
            raise TransportError(
                f"{self.name}: no response within {timing.first_byte_timeout:g}s",
                before_first_byte=True,
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise TransportError(
                f"{self.name}: {_describe(exc)}",
                before_first_byte=True,
                unreachable=_unreachable(exc),
            ) from exc
        async with resp:
            if resp.status == 204:
                yield Control("ended")
                return
            if resp.status != 200:
                raise await broker_error(resp)
            content_type = resp.headers.get("Content-Type", "")
            if not content_type.startswith("text/event-stream"):
                raise ProtocolViolation(
                    f"{self.name}: expected text/event-stream, got {content_type!r}",
                    before_first_byte=True,
                )
            announced = announced_heartbeat(resp.headers)
            if announced is not None:
                yield Control("interval", f"{announced:g}")
            idle = timing.idle(announced)
            parser = SSEParser()
            first = True
            while True:
                wait = timing.first_byte_timeout if first else idle
                try:
                    async with asyncio.timeout(wait):
                        chunk = await resp.content.readany()
                except TimeoutError as exc:
                    if first:
                        # Headers came but no body: a buffering proxy holds the stream back.
                        raise TransportError(
                            f"{self.name}: no data within {wait:g}s (a buffering proxy?)",
                            before_first_byte=True,
                        ) from exc
                    raise WatchdogTimeout(f"{self.name}: silent for {wait:g}s") from exc
                except _CONNECTION_ERRORS as exc:
                    raise TransportError(f"{self.name}: {_describe(exc)}") from exc
                if not chunk:
                    return
                first = False
                for message in parser.feed(chunk):
                    frame = _sse_frame(message)
                    if frame is not None:
                        yield frame


class ChunkedTransport(SSETransport):
    """`GET /stream`: the SSE framing for clients that read a plain response incrementally."""

    name = "chunked"
    endpoint = "stream"


class WebSocketTransport(Transport):
    """`GET /ws`: one JSON object per text frame."""

    name = "ws"
    endpoint = "ws"

    async def frames(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        last_event_id: str | None,
        timing: Timing,
    ) -> AsyncGenerator[Frame, None]:
        params = {"last_event_id": last_event_id} if last_event_id else {}
        try:
            async with asyncio.timeout(timing.first_byte_timeout):
                ws = await session.ws_connect(
                    target.url(self.endpoint),
                    params=params,
                    headers=target.headers,
                    autoping=True,
                    max_msg_size=0,  # the broker bounds messages; do not cut big ones here
                )
        except TimeoutError as exc:
            raise TransportError(
                f"ws: no handshake within {timing.first_byte_timeout:g}s", before_first_byte=True
            ) from exc
        except _CONNECTION_ERRORS as exc:
            # The broker upgrades even requests it rejects, so a failed handshake is a proxy
            # or a broker without WebSocket: another transport may work.
            raise TransportError(
                f"ws: {_describe(exc)}", before_first_byte=True, unreachable=_unreachable(exc)
            ) from exc
        async with ws:
            # aiohttp keeps the handshake answer only privately; without it the known heartbeat
            # (open response, an earlier stream, or the default) serves.
            handshake = getattr(ws, "_response", None)
            announced = announced_heartbeat(getattr(handshake, "headers", None))
            if announced is not None:
                yield Control("interval", f"{announced:g}")
            idle = timing.idle(announced)
            received = False
            while True:
                try:
                    async with asyncio.timeout(idle):
                        msg = await ws.receive()
                except TimeoutError as exc:
                    raise WatchdogTimeout(f"ws: silent for {idle:g}s") from exc
                except _CONNECTION_ERRORS as exc:
                    raise TransportError(f"ws: {_describe(exc)}") from exc
                if msg.type is aiohttp.WSMsgType.TEXT:
                    frame = await self._frame(ws, msg.data)
                    received = True
                    if frame is not None:
                        yield frame
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    code = ws.close_code
                    if code == 1000:
                        if not received:
                            # Closed before any frame: the channel ended before our position.
                            yield Control("ended")
                        return
                    if code is not None and 4000 <= code < 5000:
                        status = code - 4000
                        raise BrokerError(status, "http_error", f"ws closed with {code}")
                    raise TransportError(f"ws: closed with code {code}")
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    raise TransportError(f"ws: {_describe(ws.exception())}")
                # BINARY and others are not part of the protocol: ignored.

    async def _frame(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> Frame | None:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ProtocolViolation(f"ws: frame is not JSON: {text!r:.100}") from exc
        if not isinstance(raw, dict):
            raise ProtocolViolation(f"ws: frame is not an object: {text!r:.100}")
        kind = raw.get("type")
        if kind in _EVENT_TYPES:
            return parse_event(raw)
        if kind == "ping":
            return Control("heartbeat")
        if kind == "gap":
            first_id = raw.get("first_id")
            return Control("gap", first_id if isinstance(first_id, str) else None)
        if kind == "reconnect":
            reason = raw.get("reason")
            return Control("reconnect", str(reason) if reason is not None else None)
        if kind == "rejected":
            raise await self._rejection(ws, raw.get("error"))
        return None

    async def _rejection(self, ws: aiohttp.ClientWebSocketResponse, error: Any) -> BrokerError:
        code, message = "rejected", "the broker rejected the connection"
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
        status = 400
        # The close code (4000 + HTTP status) follows the frame; it tells retriable from not.
        try:
            async with asyncio.timeout(2.0):
                await ws.receive()
        except (TimeoutError, *_CONNECTION_ERRORS):
            pass
        if ws.close_code is not None and 4000 <= ws.close_code < 5000:
            status = ws.close_code - 4000
        return BrokerError(status, code, message)


class PollTransport(Transport):
    """`GET /poll`: a chain of long-poll requests, each resuming where the last one ended."""

    name = "poll"
    endpoint = "poll"

    async def frames(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        last_event_id: str | None,
        timing: Timing,
    ) -> AsyncGenerator[Frame, None]:
        position = last_event_id
        first = True
        # The broker holds a request up to poll_timeout; beyond that plus a margin it is lost.
        deadline = timing.poll_timeout + timing.first_byte_timeout
        while True:
            params = {"timeout": str(timing.poll_timeout)}
            if position:
                params["last_event_id"] = position
            body: Any = None
            try:
                async with asyncio.timeout(deadline):
                    async with session.get(
                        target.url(self.endpoint),
                        params=params,
                        headers=target.headers,
                        # Our deadline governs; a caller's session may have a shorter total.
                        timeout=aiohttp.ClientTimeout(total=None),
                    ) as resp:
                        if resp.status == 204:
                            body = {"events": [], "ended": True}
                        elif resp.status != 200:
                            raise await broker_error(resp)
                        else:
                            body = await resp.json(content_type=None)
            except TimeoutError as exc:
                raise TransportError(
                    f"poll: no answer within {deadline:g}s", before_first_byte=first
                ) from exc
            except _CONNECTION_ERRORS as exc:
                raise TransportError(
                    f"poll: {_describe(exc)}",
                    before_first_byte=first,
                    unreachable=first and _unreachable(exc),
                ) from exc
            except ValueError as exc:
                raise ProtocolViolation("poll: the answer is not JSON") from exc
            first = False
            if not isinstance(body, dict) or not isinstance(body.get("events"), list):
                raise ProtocolViolation(f"poll: unexpected answer {body!r:.200}")
            gap = body.get("gap")
            if isinstance(gap, dict):
                first_id = gap.get("first_id")
                yield Control("gap", first_id if isinstance(first_id, str) else None)
            events = [parse_event(raw) for raw in body["events"]]
            for event in events:
                yield event
            if body.get("ended") and not events:
                yield Control("ended")
                return
            next_position = body.get("last_event_id")
            if isinstance(next_position, str) and next_position:
                position = next_position
            elif events:
                position = events[-1].id


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


TRANSPORTS: Final[Mapping[WireTransport, Transport]] = {
    transport.name: transport
    for transport in (SSETransport(), ChunkedTransport(), WebSocketTransport(), PollTransport())
}
AUTO_ORDER: Final[tuple[WireTransport, ...]] = ("sse", "ws", "poll")
