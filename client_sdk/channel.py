"""`open_channel` and `subscribe`: the public entry points of the async client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from client_sdk.backoff import Backoff
from client_sdk.errors import InvalidChannelReference, ProtocolViolation, TransportError
from client_sdk.ids import is_event_id
from client_sdk.models import Event, GapInfo
from client_sdk.reader import TRANSPORT_NAMES, OnGap, OnReconnect, Reader, TransportName
from client_sdk.refs import ChannelRef, resolve
from client_sdk.transports import Target, Timing, broker_error

DEFAULT_HEARTBEAT = 15.0  # the broker's default; the open response tells the real one
WATCHDOG_FACTOR = 2.5  # missing two heartbeats (plus slack) means the connection is dead


class Channel:
    """A channel being read. `async for data in channel` yields message data until `end`;
    `channel.events()` yields whole `Event`s (with ids) instead."""

    def __init__(
        self,
        ref: ChannelRef,
        reader: Reader,
        session: aiohttp.ClientSession,
        *,
        owns_session: bool,
    ) -> None:
        self._ref = ref
        self._reader = reader
        self._session = session
        self._owns_session = owns_session

    @property
    def id(self) -> str:
        return self._ref.channel_id

    @property
    def read_token(self) -> str:
        return self._ref.token

    @property
    def token(self) -> dict[str, Any]:
        """The channel token for a backend: `{"unbroken": 1, "broker", "channel", "token"}`.

        Pass it (or `json.dumps` of it) to whatever writes; it holds the write token."""
        if self._ref.channel_token is None:
            raise InvalidChannelReference(
                "this channel was subscribed with a read token: its channel token is unknown"
            )
        return self._ref.channel_token

    @property
    def info(self) -> dict[str, Any]:
        """The broker's open response (empty for `subscribe` with an id or a token)."""
        return self._ref.info

    @property
    def last_event_id(self) -> str | None:
        return self._reader.last_event_id

    @property
    def ended(self) -> bool:
        return self._reader.ended

    @property
    def end_data(self) -> Any:
        """The data of the `end` event (None before the end, or when the end had none)."""
        return self._reader.end_data

    @property
    def reconnects(self) -> int:
        return self._reader.reconnects

    @property
    def gaps(self) -> list[GapInfo]:
        return self._reader.gaps

    @property
    def transport(self) -> str:
        return self._reader.transport

    def events(self) -> AsyncIterator[Event]:
        return self._reader.events()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        async for event in self._reader.events():
            yield event.data

    async def close(self) -> None:
        if self._owns_session and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Channel {self.id} last_event_id={self.last_event_id} ended={self.ended}>"


class ChannelContext:
    """Both `ch = await open_channel(...)` and `async with open_channel(...) as ch:`."""

    def __init__(self, factory: Callable[[], Awaitable[Channel]]) -> None:
        self._factory = factory
        self._channel: Channel | None = None

    def __await__(self) -> Generator[Any, None, Channel]:
        return self._factory().__await__()

    async def __aenter__(self) -> Channel:
        self._channel = await self._factory()
        return self._channel

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            await self._channel.close()


def open_channel(
    broker_url: str,
    *,
    name: str | None = None,
    transport: TransportName | str = "auto",
    app_key: str | None = None,
    session: aiohttp.ClientSession | None = None,
    last_event_id: str | None = None,
    heartbeat: float | None = None,
    idle_timeout: float | None = None,
    first_byte_timeout: float = 10.0,
    poll_timeout: int = 25,
    max_duration: float | None = None,
    backoff: Backoff | None = None,
    max_retries: int | None = None,
    on_reconnect: OnReconnect | None = None,
    on_gap: OnGap | None = None,
    open_timeout: float = 10.0,
) -> ChannelContext:
    """Open a channel on the broker (`POST /v1/channels`) and read it.

    `name` picks the channel id (409 `channel_exists` if taken); `app_key` is needed when the
    broker's open policy is `key`. The other options are those of `subscribe`.
    """

    if transport not in TRANSPORT_NAMES:  # before the channel is created for nothing
        raise ValueError(f"unknown transport {transport!r}; use one of {TRANSPORT_NAMES}")

    options = ReadOptions(
        transport, last_event_id, heartbeat, idle_timeout, first_byte_timeout, poll_timeout,
        max_duration, backoff, max_retries, on_reconnect, on_gap,
    )  # fmt: skip

    async def opened(http: aiohttp.ClientSession) -> ChannelRef:
        info = await create_channel(
            http, broker_url, name=name, app_key=app_key, open_timeout=open_timeout
        )
        return resolve(info)

    return _context(opened, session, broker_url, options)


def subscribe(
    broker_url: str | None,
    channel_or_token: str | Mapping[str, Any],
    *,
    token: str | None = None,
    transport: TransportName | str = "auto",
    session: aiohttp.ClientSession | None = None,
    last_event_id: str | None = None,
    heartbeat: float | None = None,
    idle_timeout: float | None = None,
    first_byte_timeout: float = 10.0,
    poll_timeout: int = 25,
    max_duration: float | None = None,
    backoff: Backoff | None = None,
    max_retries: int | None = None,
    on_reconnect: OnReconnect | None = None,
    on_gap: OnGap | None = None,
) -> ChannelContext:
    """Read an existing channel.

    `channel_or_token` is a channel id (then `token` is its read token), a read or write JWT,
    a channel token, or an open response (object or JSON text). `broker_url` may be None when
    the token or channel token names the broker. `last_event_id` resumes after that event.
    `heartbeat` is the broker's heartbeat interval; the watchdog reconnects after
    `idle_timeout` (default 2.5 heartbeats) without a byte. `max_retries` bounds consecutive
    failed attempts (None: never give up on retriable failures). `max_duration` asks the broker
    to end each SSE/chunked response after that many seconds (the reader resumes at once).
    """

    options = ReadOptions(
        transport, last_event_id, heartbeat, idle_timeout, first_byte_timeout, poll_timeout,
        max_duration, backoff, max_retries, on_reconnect, on_gap,
    )  # fmt: skip

    async def existing(http: aiohttp.ClientSession) -> ChannelRef:
        return resolve(channel_or_token, token)

    return _context(existing, session, broker_url, options)


async def create_channel(
    session: aiohttp.ClientSession,
    broker_url: str,
    *,
    name: str | None = None,
    app_key: str | None = None,
    open_timeout: float = 10.0,
) -> dict[str, Any]:
    """`POST /v1/channels`: the open response (id, read_token, channel_token, ...)."""
    url = URL(broker_url) / "v1" / "channels"
    headers = {"Authorization": f"Bearer {app_key}"} if app_key else {}
    body = {"name": name} if name is not None else {}
    try:
        async with asyncio.timeout(open_timeout):
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status != 201 and resp.status != 200:
                    raise await broker_error(resp)
                info = await resp.json(content_type=None)
    except TimeoutError as exc:
        raise TransportError(
            f"the broker at {broker_url} did not answer within {open_timeout:g}s"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"cannot reach the broker at {broker_url}: {exc}") from exc
    except ValueError as exc:
        raise ProtocolViolation(f"the broker's open response is not JSON: {exc}") from exc
    if not isinstance(info, dict) or "id" not in info or "read_token" not in info:
        raise ProtocolViolation(f"unexpected open response: {info!r:.200}")
    return info


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How to read: the options `open_channel` and `subscribe` share."""

    transport: TransportName | str
    last_event_id: str | None
    heartbeat: float | None
    idle_timeout: float | None
    first_byte_timeout: float
    poll_timeout: int
    max_duration: float | None
    backoff: Backoff | None
    max_retries: int | None
    on_reconnect: OnReconnect | None
    on_gap: OnGap | None


def _context(
    find: Callable[[aiohttp.ClientSession], Awaitable[ChannelRef]],
    session: aiohttp.ClientSession | None,
    broker_url: str | None,
    options: ReadOptions,
) -> ChannelContext:
    """A ChannelContext whose channel comes from `find`; a session made here is the channel's."""

    async def factory() -> Channel:
        own = session is None
        http = session if session is not None else aiohttp.ClientSession()
        try:
            return _make_channel(http, own, await find(http), broker_url, options)
        except BaseException:
            if own:
                await http.close()
            raise

    return ChannelContext(factory)


def _make_channel(
    session: aiohttp.ClientSession,
    owns_session: bool,
    ref: ChannelRef,
    broker_url: str | None,
    options: ReadOptions,
) -> Channel:
    # The URL the caller reached the broker by wins over the one in the token: behind a proxy
    # or in a container the broker's idea of its public URL may not be reachable from here.
    base = broker_url or ref.broker_url
    if not base:
        raise InvalidChannelReference("no broker URL given, and the token does not name one")
    last_event_id = options.last_event_id
    if last_event_id is not None and not is_event_id(last_event_id):
        raise InvalidChannelReference(
            f"last_event_id {last_event_id!r} is not an event id (<ms>-<seq>, e.g. 1732500000000-0)"
        )
    beat = options.heartbeat or ref.heartbeat or DEFAULT_HEARTBEAT
    timing = Timing(
        idle_timeout=(
            options.idle_timeout if options.idle_timeout is not None else WATCHDOG_FACTOR * beat
        ),
        first_byte_timeout=options.first_byte_timeout,
        poll_timeout=options.poll_timeout,
        max_duration=options.max_duration,
    )
    reader = Reader(
        session,
        Target(URL(base), ref.channel_id, ref.token),
        transport=options.transport,
        last_event_id=last_event_id,
        timing=timing,
        backoff=options.backoff,
        max_retries=options.max_retries,
        on_reconnect=options.on_reconnect,
        on_gap=options.on_gap,
    )
    return Channel(ref, reader, session, owns_session=owns_session)
