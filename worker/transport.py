"""The two ways a worker reaches a channel: the broker's HTTP write API, or Redis directly.

A *connection* (an aiohttp session, or a Redis client plus one shared pub/sub connection) is
shared by every channel a process writes to; a *transport* is one channel's door through it.
Both take whole requests `(items, writer, seq)`, so a retried request is recognised and dropped
by the channel's (writer, seq) check instead of being stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import quote

import aiohttp

from broker.events import EventType, pack
from worker.errors import (
    BadTokenError,
    ChannelCancelled,
    ChannelEndedError,
    ChannelExpiredError,
    InvalidMessageError,
    MessageTooLargeError,
    WorkerError,
)

log = logging.getLogger("unbroken.worker")

# What a watcher reports: "cancelled", "end", "error" or "gone".
OnTerminal = Callable[[str], None]


class Item:
    """One event to append, encoded once: JSON text for HTTP, msgpack for Redis."""

    __slots__ = ("_packed", "json", "kind", "value")

    def __init__(self, kind: EventType, value: Any, json_text: str) -> None:
        self.kind: EventType = kind
        self.value = value
        self.json = json_text
        self._packed: bytes | None = None

    @property
    def packed(self) -> bytes:
        if self._packed is None:
            self._packed = pack(self.value)
        return self._packed


Items = Sequence[Item]


class TransientError(Exception):
    """Worth retrying: the request may or may not have been applied."""


class Transport(Protocol):
    """One channel's door to the broker or Redis."""

    async def append(self, items: Items, writer: str, seq: int) -> list[str]: ...

    async def heartbeat(self) -> None: ...

    def watch(self, on_terminal: OnTerminal) -> Callable[[], None]:
        """Start learning of the channel's terminal event; returns a function that stops."""
        ...


# --- HTTP ------------------------------------------------------------------------------------

_HTTP_ERRORS: dict[int, type[WorkerError]] = {
    401: BadTokenError,
    403: BadTokenError,
    409: ChannelEndedError,
    410: ChannelExpiredError,
    413: MessageTooLargeError,
    400: InvalidMessageError,
}


class HttpConnection:
    """The aiohttp sessions every channel written over HTTP shares: one for requests, and one
    without a connection limit for the long-lived cancel watches, so that watching many
    channels never makes a write wait for a free connection."""

    def __init__(self, timeout: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    @property
    def watch_session(self) -> aiohttp.ClientSession:
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=self.timeout
            )
        return self._watch_session

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None


def _http_error(status: int, payload: Any) -> Exception:
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message", f"HTTP {status}"))
    code = error.get("code")
    if status == 429 or status >= 500:
        return TransientError(message)
    if code == "channel_cancelled":
        return ChannelCancelled(message)
    return _HTTP_ERRORS.get(status, WorkerError)(message, code if isinstance(code, str) else None)


class HttpTransport:
    def __init__(self, connection: HttpConnection, broker: str, channel_id: str, jwt: str) -> None:
        self._connection = connection
        self._root = f"{broker.rstrip('/')}/v1/channels/{quote(channel_id, safe='')}"
        self._headers = {"Authorization": f"Bearer {jwt}", "Content-Type": "application/json"}

    async def _post(self, path: str, body: str | None) -> tuple[int, Any]:
        try:
            async with self._connection.session.post(
                self._root + path, data=body, headers=self._headers
            ) as response:
                text = await response.text()
                payload = json.loads(text) if text else None
                return response.status, payload
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc

    async def append(self, items: Items, writer: str, seq: int) -> list[str]:
        kind = items[-1].kind
        # The JSON of each value was made once when it was written; the body is only joined.
        if kind == "message":
            path = "/messages"
            body = '{"messages":[' + ",".join(item.json for item in items) + "]"
        else:
            if len(items) != 1:
                raise ValueError("an end or error is sent alone over HTTP")
            path = "/end" if kind == "end" else "/error"
            body = '{"data":' + items[0].json
        body += f',"writer":{json.dumps(writer)},"seq":{seq}}}'
        status, payload = await self._post(path, body)
        if status in (200, 201) and isinstance(payload, dict):
            # A duplicate (a retry of a request already applied) reports the id stored then.
            ids = payload.get("ids") or [payload.get("last_event_id")]
            return [str(i) for i in ids]
        raise _http_error(status, payload)

    async def heartbeat(self) -> None:
        status, payload = await self._post("/heartbeat", None)
        if status not in (200, 204):
            raise _http_error(status, payload)

    def watch(self, on_terminal: OnTerminal) -> Callable[[], None]:
        task = asyncio.get_running_loop().create_task(self._watch(on_terminal))

        def stop() -> None:
            task.cancel()

        return stop

    async def _watch(self, on_terminal: OnTerminal) -> None:
        """Follow `events?only=terminal` (terminal events and heartbeats only), reconnecting
        until a terminal event arrives."""
        delay = 0.2
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        while True:
            try:
                async with self._connection.watch_session.get(
                    self._root + "/events",
                    params={"only": "terminal"},
                    headers={"Authorization": self._headers["Authorization"]},
                    timeout=timeout,
                ) as response:
                    if response.status == 204:
                        on_terminal(await self._state())
                        return
                    if response.status in (404, 409, 410):
                        on_terminal("gone" if response.status != 409 else "end")
                        return
                    if response.status != 200:
                        # An older broker or a refused token: no live notice, writes still
                        # learn of a cancel from their answer.
                        log.warning("cancel watch refused: HTTP %s", response.status)
                        return
                    delay = 0.2
                    kind = ""
                    async for raw in response.content:
                        line = raw.decode("utf-8", "replace").rstrip("\r\n")
                        if line.startswith("event:"):
                            kind = line[6:].strip()
                        elif not line:
                            if kind in ("cancelled", "end", "error"):
                                on_terminal(kind)
                                return
                            kind = ""
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.debug("cancel watch interrupted: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _state(self) -> str:
        """The channel's state after the terminal event has passed ("cancelled" or "end")."""
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, ValueError, OSError):
            async with self._connection.session.get(
                self._root, headers={"Authorization": self._headers["Authorization"]}
            ) as response:
                if response.status == 200:
                    state = (await response.json()).get("state")
                    if state == "cancelled":
                        return "cancelled"
                elif response.status in (404, 410):
                    return "gone"
        return "end"


# --- Redis -----------------------------------------------------------------------------------


def _redis_transient(exc: BaseException) -> bool:
    """Errors that mean "reconnect and retry": the server restarts, loads, fails over, or a
    cluster slot moves. The request may have been applied; (writer, seq) makes the retry safe."""
    from redis import exceptions as e

    if isinstance(exc, e.AuthenticationError | e.AuthorizationError | e.NoPermissionError):
        return False  # a wrong password does not heal by waiting
    if isinstance(
        exc,
        e.ConnectionError  # BusyLoadingError (LOADING) and MaxConnectionsError included
        | e.TimeoutError
        | OSError
        | e.ReadOnlyError
        | e.MasterDownError
        | e.ClusterDownError
        | e.TryAgainError
        | e.MovedError
        | e.AskError
        | e.SlotNotCoveredError,
    ):
        return True
    # The engine's policy too: a refusal raised by redis.call() inside a script reaches us as a
    # generic error carrying the same words. Every worker request is idempotent (writer, seq),
    # so a lost reply is retried as well.
    from broker.engine.redis_client import not_run, transient

    return not_run(exc) or transient(exc)


def connect_redis(url: str, timeout: float) -> Any:
    """A client for any Redis URL the broker takes (single, TLS, Cluster, Sentinel), with socket
    timeouts so a frozen server becomes an error (and a retry), not a silent block."""
    from broker.engine.redis_client import connect

    return connect(url, socket_timeout=timeout, socket_connect_timeout=timeout)


class RedisConnection:
    """One Redis client (its pool) plus one pub/sub connection for every watched channel."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        self.redis = connect_redis(url, timeout)
        self.prefix = prefix
        self._pubsub: Any = None  # redis-py PubSub, or ClusterPubSub for a Cluster client
        self._sharded = False  # SSUBSCRIBE (the scripts SPUBLISH) rather than SUBSCRIBE
        self._ready = False  # subscribed to every watched channel
        self._wanted = asyncio.Event()
        self._closed = False
        self._listener: asyncio.Task[None] | None = None
        self._watchers: dict[str, dict[int, tuple[str, OnTerminal]]] = {}
        self._next_id = 0

    async def drop_connections(self, exc: BaseException) -> None:
        """Forget pooled connections the error shows are stale: all of them after READONLY (a
        demoted primary; Sentinel or DNS then names the new one), the slot map for a Cluster.
        The broker's engine follows the same policy (redis_client.drop_stale_connections)."""
        from broker.engine.redis_client import drop_stale_connections

        with contextlib.suppress(Exception):
            await drop_stale_connections(self.redis, exc)

    def watch(self, channel_id: str, on_terminal: OnTerminal) -> Callable[[], None]:
        from broker.engine.redis_layout import channel_keys

        live = channel_keys(self.prefix, channel_id).live
        self._next_id += 1
        key = self._next_id
        self._watchers.setdefault(live, {})[key] = (channel_id, on_terminal)
        self._wanted.set()
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        elif self._ready:
            asyncio.get_running_loop().create_task(self._subscribe(live))

        def stop() -> None:
            watchers = self._watchers.get(live, {})
            watchers.pop(key, None)
            if not watchers:
                self._watchers.pop(live, None)
                if self._pubsub is not None and self._listener is not None:
                    self._listener.get_loop().create_task(self._unsubscribe(live))

        return stop

    async def _subscribe(self, live: str) -> None:
        if self._pubsub is None or not self._ready:
            return  # the listener's resync subscribes it
        try:
            await self._add(self._pubsub, [live])
            await self._check_state(live)
        except Exception as exc:  # the listener resubscribes and re-checks after reconnecting
            log.debug("subscribe failed: %s", exc)

    async def _unsubscribe(self, live: str) -> None:
        if self._pubsub is not None and live not in self._watchers:
            with contextlib.suppress(Exception):
                if self._sharded:
                    await self._pubsub.sunsubscribe(live)
                else:
                    await self._pubsub.unsubscribe(live)

    async def _sharded_pubsub(self) -> bool:
        """Whether entries are published with SPUBLISH here: decided by the same check as the
        scripts' (broker.engine.redis_layout.sharded_pubsub), so worker and broker agree."""
        from broker.engine.redis_layout import sharded_pubsub

        return await sharded_pubsub(self.redis)

    async def _add(self, pubsub: Any, lives: list[str]) -> None:
        if self._sharded:
            await pubsub.ssubscribe(*lives)
        else:
            await pubsub.subscribe(*lives)

    async def _next_message(self) -> dict[str, Any] | None:
        pubsub = self._pubsub
        if self._sharded and hasattr(pubsub, "get_sharded_message"):
            # A Cluster client keeps one connection per shard holding subscriptions.
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
        else:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        return cast("dict[str, Any] | None", message)

    async def _check_state(self, live: str) -> None:
        """A cancel published before the subscription took effect is read from the meta hash."""
        from broker.engine.redis_layout import channel_keys

        for channel_id, _ in list(self._watchers.get(live, {}).values())[:1]:
            state = await self.redis.hget(channel_keys(self.prefix, channel_id).meta, "state")
            if state is None:
                if not await self.redis.exists(channel_keys(self.prefix, channel_id).meta):
                    self._notify(live, "gone")
            elif state != b"open":
                self._notify(live, "cancelled" if state == b"cancelled" else "end")

    def _notify(self, live: str, kind: str) -> None:
        for _, on_terminal in list(self._watchers.pop(live, {}).values()):
            on_terminal(kind)
        if self._pubsub is not None:
            asyncio.get_running_loop().create_task(self._unsubscribe(live))

    async def _listen(self) -> None:
        """The one pub/sub reader: dispatches terminal entries of every watched channel. It
        lives as long as the connection, so a watch never races its shutdown."""
        delay = 0.2
        self._pubsub = self.redis.pubsub()
        resync = True
        try:
            while not self._closed:
                if not self._watchers:
                    self._wanted.clear()
                    await self._wanted.wait()
                    continue
                try:
                    if resync:
                        await self._resync()
                        resync = False
                    message = await self._next_message()
                    delay = 0.2
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("pub/sub interrupted: %s", exc)
                    self._ready = False
                    with contextlib.suppress(Exception):
                        await self._pubsub.aclose()
                    self._pubsub = self.redis.pubsub()
                    resync = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if message is None or message.get("type") not in ("message", "smessage"):
                    continue
                live = message["channel"].decode()
                parts = bytes(message["data"]).split(b"\n", 2)
                text = parts[1].decode() if len(parts) > 1 else ""
                if text in ("cancelled", "end", "error", "deleted"):
                    self._notify(live, "gone" if text == "deleted" else text)
        finally:
            pubsub, self._pubsub = self._pubsub, None
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _resync(self) -> None:
        """(Re)subscribe every watched channel and re-read its state: notices published while
        the connection was down (or before the subscription took effect) are not replayed."""
        self._ready = False
        self._sharded = await self._sharded_pubsub()
        done: set[str] = set()
        while todo := [live for live in self._watchers if live not in done]:
            await self._add(self._pubsub, todo)
            for live in todo:
                await self._check_state(live)
            done.update(todo)
        self._ready = True  # from now on a new watch subscribes by itself

    async def close(self) -> None:
        self._watchers.clear()
        self._closed = True
        self._wanted.set()
        listener, self._listener = self._listener, None
        # redis-py may swallow a cancellation that lands inside get_message(), so the flag
        # ends the loop too; cancelling again covers a listener parked elsewhere.
        for _ in range(20):  # bounded: closing must not hang on a stuck socket
            if listener is None or listener.done():
                break
            listener.cancel()
            await asyncio.wait([listener], timeout=0.1)
        if listener is not None and listener.done() and not listener.cancelled():
            listener.exception()  # retrieved: it was logged where it happened
        await self.redis.aclose()


class RedisTransport:
    def __init__(self, connection: RedisConnection, channel_id: str) -> None:
        self._connection = connection
        self._channel_id = channel_id

    async def append(self, items: Items, writer: str, seq: int) -> list[str]:
        from broker.engine.redis_layout import append_events

        try:
            result = await append_events(
                self._connection.redis,
                self._connection.prefix,
                self._channel_id,
                [(item.kind, item.packed) for item in items],
                writer=writer,
                seq=seq,
            )
        except Exception as exc:
            raise await self._map(exc) from exc
        return list(result.ids) or [str(result.last_event_id)]

    async def heartbeat(self) -> None:
        from broker.engine.redis_layout import heartbeat

        try:
            await heartbeat(self._connection.redis, self._connection.prefix, self._channel_id)
        except Exception as exc:
            raise await self._map(exc) from exc

    def watch(self, on_terminal: OnTerminal) -> Callable[[], None]:
        return self._connection.watch(self._channel_id, on_terminal)

    async def _map(self, exc: Exception) -> Exception:
        from broker.engine import base

        if isinstance(exc, base.ChannelCancelled):
            return ChannelCancelled(f"Channel {self._channel_id} was cancelled by the reader.")
        if isinstance(exc, base.ChannelNotFound):
            return ChannelExpiredError(
                f"Channel {self._channel_id} has expired or was deleted (or the worker's "
                "UNBROKEN_REDIS_PREFIX differs from the broker's)."
            )
        if isinstance(exc, base.ChannelEnded):
            return ChannelEndedError(
                f"Channel {self._channel_id} has ended; nothing more can be written."
            )
        if _redis_transient(exc):
            await self._connection.drop_connections(exc)
            return TransientError(f"{type(exc).__name__}: {exc}")
        return exc
