"""`open_channel` and `subscribe`: the public entry points of the async client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from broker.vocabulary import ChannelState
from client_sdk.api import BrokerURLs, broker_list, cancel_channel, create_channel
from client_sdk.backoff import Backoff
from client_sdk.errors import (
    BrokerError,
    ChannelErrorEvent,
    InvalidChannelReference,
    TransportError,
)
from client_sdk.ids import is_event_id
from client_sdk.models import Event, GapInfo
from client_sdk.reader import TRANSPORT_NAMES, OnGap, OnReconnect, Reader, TransportName
from client_sdk.refs import ChannelRef, resolve
from client_sdk.store import ChannelStore, SavedChannel, as_store
from client_sdk.transports import Target, Timing

# The broker's default, used until it says otherwise (open response, `Unbroken-Heartbeat`).
DEFAULT_HEARTBEAT = 15.0
StoreArg = ChannelStore | str | os.PathLike[str] | None


class Channel:
    """A channel being read. `async for data in channel` yields message data until `end` (or
    `cancelled`); `channel.events()` yields whole `Event`s (with ids) instead."""

    def __init__(
        self,
        ref: ChannelRef,
        reader: Reader,
        session: aiohttp.ClientSession,
        *,
        owns_session: bool,
        store: ChannelStore | None = None,
    ) -> None:
        self._ref = ref
        self._reader = reader
        self._session = session
        self._owns_session = owns_session
        self._store = store
        self._save()

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
    def state(self) -> ChannelState:
        """`open` while events may come, `ended` after `end` or `error`, `cancelled` after a
        cancel (by this client or another reader)."""
        return self._reader.state

    @property
    def ended(self) -> bool:
        """True once nothing more will come: ended, failed or cancelled."""
        return self._reader.ended

    @property
    def cancelled(self) -> bool:
        return self._reader.state == "cancelled"

    @property
    def cancel_reason(self) -> str | None:
        """The reason given to `cancel()`, once the `cancelled` event arrived."""
        return self._reader.cancel_reason

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
        """The wire transport in use: `sse`, `chunked`, `ws` or `poll` (the broker's names)."""
        return self._reader.transport

    @property
    def broker_url(self) -> str:
        """The broker in use (with several broker URLs, the one the reader fails over to)."""
        return str(self._reader.target.broker_url)

    @property
    def heartbeat(self) -> float:
        """The broker's heartbeat interval the watchdog follows (announced by the broker)."""
        return self._reader.heartbeat

    async def events(self) -> AsyncIterator[Event]:
        """Message events, each exactly once and in order, until the channel ends."""
        try:
            async for event in self._reader.events():
                yield event
                # The application asked for the next one: it is done with this one.
                self._save()
        except ChannelErrorEvent:
            self._forget()
            raise
        except BrokerError as exc:
            if exc.status in (404, 410):  # expired or deleted: nothing to resume
                self._forget()
            raise
        if self.ended:
            self._forget()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        async for event in self.events():
            yield event.data

    async def cancel(self, reason: str | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
        """Stop the channel's producer (a "Stop generating" button).

        `POST /v1/channels/{id}/cancel` with the read token: the broker appends the terminal
        `cancelled` event, the writer learns it (its writes fail with ChannelCancelled), and
        every reader, this one included, ends with `state == "cancelled"`. Returns the broker's
        answer `{"ids", "duplicate", "last_event_id"}` (`duplicate` when it was already
        cancelled); a channel that already ended raises BrokerError 409 `channel_ended`.
        """
        return await cancel_channel(
            self._session,
            self._reader.targets,
            reason,
            first=self._reader.target,
            timeout=timeout,
        )

    def _save(self) -> None:
        if self._store is None or self.ended:
            return
        state: SavedChannel = {
            "broker": [str(target.broker_url) for target in self._reader.targets],
            "channel": self.id,
            "read_token": self.read_token,
            "last_event_id": self.last_event_id,
        }
        self._store.save(state)

    def _forget(self) -> None:
        if self._store is not None:
            self._store.clear()

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
        return f"<Channel {self.id} last_event_id={self.last_event_id} state={self.state}>"


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
    broker_url: BrokerURLs,
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
    store: StoreArg = None,
) -> ChannelContext:
    """Open a channel on the broker (`POST /v1/channels`) and read it.

    `name` picks the channel id (409 `channel_exists` if taken); `app_key` is needed when the
    broker's open policy is `key`. With several broker URLs (brokers sharing one Redis) the
    first that answers opens the channel and the reader fails over between all of them.
    The other options are those of `subscribe`.
    """

    if transport not in TRANSPORT_NAMES:  # before the channel is created for nothing
        raise ValueError(f"unknown transport {transport!r}; use one of {TRANSPORT_NAMES}")
    urls = broker_list(broker_url)
    options = ReadOptions(
        transport, last_event_id, heartbeat, idle_timeout, first_byte_timeout, poll_timeout,
        max_duration, backoff, max_retries, on_reconnect, on_gap, as_store(store),
    )  # fmt: skip

    async def opened(http: aiohttp.ClientSession) -> tuple[ChannelRef, list[str]]:
        error: BaseException | None = None
        for index, url in enumerate(urls):
            try:
                info = await create_channel(
                    http, url, name=name, app_key=app_key, open_timeout=open_timeout
                )
            except TransportError as exc:
                error = exc
                continue
            except BrokerError as exc:
                if exc.status != 503:  # only a draining broker sends us to another one
                    raise
                error = exc
                continue
            # Read from the broker that opened it first, then fail over in the given order.
            return resolve(info), urls[index:] + urls[:index]
        assert error is not None
        raise error

    return _context(opened, session, options)


def subscribe(
    broker_url: BrokerURLs | None,
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
    store: StoreArg = None,
) -> ChannelContext:
    """Read an existing channel.

    `channel_or_token` is a channel id (then `token` is its read token), a read or write JWT,
    a channel token, or an open response (object or JSON text). `broker_url` is one URL or
    several (a list, or one string with commas: the reader fails over between them); it may be
    None when the token or channel token names the broker, and `localhost:8080` means
    `http://localhost:8080`. `last_event_id` resumes after that event. `heartbeat` is the
    broker's heartbeat interval until the broker announces its own (`Unbroken-Heartbeat`); the
    watchdog reconnects after `idle_timeout` (default 2.5 heartbeats) without a byte.
    `max_retries` bounds consecutive failed attempts (None: never give up on retriable
    failures). `max_duration` asks the broker to end each SSE/chunked response after that many
    seconds (the reader resumes at once). `store` (a path or a `ChannelStore`) keeps the
    position so that `attach(store=...)` in a restarted process shows the rest.
    """

    options = ReadOptions(
        transport, last_event_id, heartbeat, idle_timeout, first_byte_timeout, poll_timeout,
        max_duration, backoff, max_retries, on_reconnect, on_gap, as_store(store),
    )  # fmt: skip
    urls = broker_list(broker_url) if broker_url else []

    async def existing(http: aiohttp.ClientSession) -> tuple[ChannelRef, list[str]]:
        ref = resolve(channel_or_token, token)
        # The URL the caller reached the broker by wins over the one in the token: behind a
        # proxy or in a container the broker's idea of its public URL may not be reachable.
        if urls:
            return ref, urls
        if ref.broker_url:
            return ref, broker_list(ref.broker_url)
        raise InvalidChannelReference("no broker URL given, and the token does not name one")

    return _context(existing, session, options)


def attach(
    broker_url: BrokerURLs | None = None,
    channel: str | None = None,
    read_token: str | None = None,
    last_event_id: str | None = None,
    *,
    store: StoreArg = None,
    **options: Any,
) -> ChannelContext:
    """Rejoin a channel that was being read before (after a restart, a reload, a crash).

    Either name it (`channel` with its `read_token`, and the `last_event_id` you had shown), or
    pass only `store=`: the broker URLs, channel, token and position saved there by an earlier
    `open_channel(..., store=...)` / `subscribe(..., store=...)` are used, and reading goes on
    saving to it. Other options are those of `subscribe`. Raises InvalidChannelReference when
    the store holds nothing (check `FileStore(path).load()` first to choose between `attach`
    and `open_channel`).
    """
    chosen = as_store(store)
    if channel is None:
        saved = chosen.load() if chosen is not None else None
        if saved is None:
            raise InvalidChannelReference(
                f"nothing to attach to: no channel given and none saved in {chosen!r}"
            )
        channel, read_token = saved["channel"], saved["read_token"]
        broker_url = broker_url or saved["broker"]
        if last_event_id is None:
            last_event_id = saved["last_event_id"]
    elif read_token is None:
        raise InvalidChannelReference("attach needs the channel's read_token")
    return subscribe(
        broker_url,
        channel,
        token=read_token,
        last_event_id=last_event_id,
        store=chosen,
        **options,
    )


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
    store: ChannelStore | None


def _context(
    find: Callable[[aiohttp.ClientSession], Awaitable[tuple[ChannelRef, list[str]]]],
    session: aiohttp.ClientSession | None,
    options: ReadOptions,
) -> ChannelContext:
    """A ChannelContext whose channel comes from `find`; a session made here is the channel's."""

    async def factory() -> Channel:
        own = session is None
        http = session if session is not None else aiohttp.ClientSession()
        try:
            ref, urls = await find(http)
            return _make_channel(http, own, ref, urls, options)
        except BaseException:
            if own:
                await http.close()
            raise

    return ChannelContext(factory)


def _make_channel(
    session: aiohttp.ClientSession,
    owns_session: bool,
    ref: ChannelRef,
    urls: list[str],
    options: ReadOptions,
) -> Channel:
    last_event_id = options.last_event_id
    if last_event_id is not None and not is_event_id(last_event_id):
        raise InvalidChannelReference(
            f"last_event_id {last_event_id!r} is not an event id (<ms>-<seq>, e.g. 1732500000000-0)"
        )
    timing = Timing(
        heartbeat=options.heartbeat or ref.heartbeat or DEFAULT_HEARTBEAT,
        idle_timeout=options.idle_timeout,
        first_byte_timeout=options.first_byte_timeout,
        poll_timeout=options.poll_timeout,
        max_duration=options.max_duration,
    )
    reader = Reader(
        session,
        [Target(URL(url), ref.channel_id, ref.token) for url in urls],
        transport=options.transport,
        last_event_id=last_event_id,
        timing=timing,
        backoff=options.backoff,
        max_retries=options.max_retries,
        on_reconnect=options.on_reconnect,
        on_gap=options.on_gap,
    )
    return Channel(ref, reader, session, owns_session=owns_session, store=options.store)
