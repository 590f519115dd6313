"""Write to a channel from a backend.

    from worker.channel import Channel

    async with Channel.from_token(token) as ch:   # token: what the client passed along
        async for delta in llm_stream():
            await ch.write({"delta": delta})    # raises ChannelCancelled after "stop"
    # leaving the block ends the channel; an exception is reported as an `error` event;
    # a cancel by the reader ends the block quietly

    import worker.channel
    await worker.channel.write(token, {"note": "one-shot"})   # or write_sync() from sync code

Writes go to Redis when a Redis URL is given (or UNBROKEN_REDIS_URL is set), which needs the
broker's key ring to verify the token (UNBROKEN_SECRET or `secret=`); otherwise to the broker's
HTTP write API, at a URL on the allow-list (UNBROKEN_BROKER_URL or `broker_url=`). See the
"Trust model" in docs/protocol.md.

Each request carries this writer's id and a sequence number, so a retry after a lost response is
dropped by the channel instead of stored twice; transient failures are retried for `retry_for`
seconds. Writes issued while another request of this channel is on its way are coalesced into one
request (`coalesce` seconds at most, 0 = off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from broker.events import EventType
from worker import trust
from worker.errors import (
    ChannelCancelled,
    ChannelEndedError,
    ChannelExpiredError,
    InvalidMessageError,
    MessageTooLargeError,
    WriteFailedError,
)
from worker.pool import Pool, background
from worker.transport import (
    HttpConnection,
    HttpTransport,
    Item,
    RedisConnection,
    RedisTransport,
    TransientError,
    Transport,
)

T = TypeVar("T")
Token = str | Mapping[str, Any]  # the serialized channel, its JSON text, or the bare write JWT
log = logging.getLogger("unbroken.worker")

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # the broker's default limit
DEFAULT_RETRY_FOR = 30.0  # rides out a Redis restart or a failover
DEFAULT_TIMEOUT = 5.0  # per attempt: a frozen server becomes a retry, not a hang
DEFAULT_COALESCE = 0.02
DEFAULT_WRITER_TIMEOUT = 60  # the broker's default lease, when the token does not say
# One coalesced request stays well inside the broker's per-request limits (1 MiB body).
MAX_BATCH_ITEMS = 500
MAX_BATCH_BYTES = 512 * 1024
MAX_DEPTH = 62  # the broker's 64 levels per body, less the two the body adds


def _too_deep(value: Any, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit` (iterative: no recursion to blow)."""
    if not isinstance(value, dict | list | tuple):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list | tuple):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_token(token: str | Mapping[str, Any]) -> tuple[str, str, str]:
    """(broker URL, channel id, write JWT) named by a channel token in any of its forms, as the
    token says: nothing is verified here (see `Channel.from_token`)."""
    parsed = trust.parse(token)
    return parsed.broker, parsed.claims.channel, parsed.jwt


def clean_exit(exc: BaseException | None) -> bool:
    """Leaving a `with` block normally (or by `sys.exit(0)`) ends the channel; leaving it by any
    other exception, cancellation and Ctrl-C included, is reported to the reader as an error:
    either way the app learns the stream is over instead of waiting for the idle expiry."""
    return exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None))


def error_data(error: BaseException | str | Any) -> Any:
    if isinstance(error, BaseException):
        return {"message": str(error) or type(error).__name__, "type": type(error).__name__}
    if isinstance(error, str):
        return {"message": error}
    return error


@dataclass
class _Entry:
    """One write() / write_many() / end() waiting to be sent."""

    items: list[Item]
    future: asyncio.Future[list[str]]
    size: int = field(default=0)


class Channel:
    """An async writer for one channel. Not shared between event loops."""

    def __init__(
        self,
        transport: Transport,
        channel_id: str,
        *,
        broker: str = "",
        retry_for: float = DEFAULT_RETRY_FOR,
        coalesce: float = DEFAULT_COALESCE,
        writer_timeout: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        owned: Iterable[HttpConnection | RedisConnection] = (),
    ) -> None:
        self.id = channel_id
        self.broker = broker
        self.writer_id = "w-" + uuid.uuid4().hex[:20]
        self.ended = False
        self.last_event_id: str | None = None
        self._transport = transport
        self._retry_for = retry_for
        self._coalesce = max(0.0, coalesce)
        self._writer_timeout = DEFAULT_WRITER_TIMEOUT if writer_timeout is None else writer_timeout
        self._max_message_bytes = max_message_bytes
        self._owned = list(owned)
        self._seq = 0
        self._pending: deque[_Entry] = deque()
        self._opened_at = 0.0  # when the oldest pending entry arrived
        self._flusher: asyncio.Task[None] | None = None
        self._urgent = asyncio.Event()
        self._closing = False  # end()/error() accepted: no more writes
        self._cancelled = asyncio.Event()
        self._finished = asyncio.Event()  # any terminal state reached
        self._stop_watch: Callable[[], None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_write = 0.0
        self._failure: BaseException | None = None  # of a write_nowait(), raised by the next call

    @classmethod
    def from_token(
        cls,
        token: str | Mapping[str, Any],
        *,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        secret: str | None = None,
        broker_url: str | None = None,
        retry_for: float = DEFAULT_RETRY_FOR,
        timeout: float = DEFAULT_TIMEOUT,
        coalesce: float = DEFAULT_COALESCE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        pool: Pool | None = None,
    ) -> Channel:
        """A writer for the channel a client's token names, once the token is trusted.

        Redis (`redis_url=` or UNBROKEN_REDIS_URL): the token's signature must verify with the
        broker's key ring (`secret=` or UNBROKEN_SECRET). HTTP: the token must name a broker on
        the allow-list (`broker_url=` or UNBROKEN_BROKER_URL, comma-separated); its signature
        is verified too when a key ring is given. Raises BadTokenError otherwise.
        """
        parsed = trust.parse(token)
        ring = trust.key_ring(secret)
        redis_url = redis_url or os.environ.get("UNBROKEN_REDIS_URL") or None
        owned: list[HttpConnection | RedisConnection] = []
        transport: Transport
        if redis_url:
            claims = trust.require_verified(parsed, ring)
            prefix = redis_prefix or os.environ.get("UNBROKEN_REDIS_PREFIX") or "unbroken"
            if pool is not None:
                redis = pool.redis(redis_url, prefix, timeout)
            else:
                redis = RedisConnection(redis_url, prefix, timeout)
                owned.append(redis)
            transport = RedisTransport(redis, claims.channel)
            broker = f"Redis {prefix}"
        else:
            claims = trust.verify(parsed, ring) if ring is not None else parsed.claims
            broker = trust.choose_broker(parsed, trust.allowed_brokers(broker_url))
            if pool is not None:
                http = pool.http(timeout)
            else:
                http = HttpConnection(timeout)
                owned.append(http)
            transport = HttpTransport(http, broker, claims.channel, parsed.jwt)
        return cls(
            transport,
            claims.channel,
            broker=broker,
            retry_for=retry_for,
            coalesce=coalesce,
            writer_timeout=parsed.writer_timeout,
            max_message_bytes=max_message_bytes,
            owned=owned,
        )

    # --- writing -----------------------------------------------------------------------------

    async def write(self, data: Any) -> str:
        """Append one message; returns its event id."""
        return (await self._submit([self._encode("message", data)]))[-1]

    def write_nowait(self, data: Any) -> asyncio.Future[str]:
        """Queue one message and return at once with a future of its event id.

        For a producer that should not wait for each answer (an LLM stream): its writes are
        then coalesced like concurrent ones. A failure is raised by the next write, end or
        error of this channel too (so the `async with` block reports it), whether or not the
        future is awaited."""
        done = self._enqueue([self._encode("message", data)], linger=True)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(entry: asyncio.Future[list[str]]) -> None:
            if future.cancelled():
                return
            if entry.cancelled() or entry.exception() is not None:
                exc = entry.exception() if not entry.cancelled() else asyncio.CancelledError()
                assert exc is not None
                if self._failure is None and not isinstance(exc, ChannelEndedError):
                    self._failure = exc
                future.set_exception(exc)
                future.exception()  # awaiting it is optional: no "never retrieved" warning
            else:
                future.set_result(entry.result()[-1])

        done.add_done_callback(settle)
        return future

    async def write_many(self, messages: Iterable[Any]) -> list[str]:
        """Append a batch atomically; returns their event ids."""
        items = [self._encode("message", m) for m in messages]
        if not items:
            return []
        return await self._submit(items)

    async def end(self, data: Any = None) -> str:
        """End the channel, with an optional final value the client receives with `end`.
        Writes still pending are sent first."""
        return (await self._submit([self._encode("end", data)], terminal=True))[-1]

    async def error(self, error: BaseException | str | Any) -> str:
        """Report a failure: the client gets an `error` event and the channel ends."""
        return (await self._submit([self._encode("error", error_data(error))], terminal=True))[-1]

    # --- cancel ------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the reader cancelled the channel (learnt live, without polling)."""
        self._watch()
        return self._cancelled.is_set()

    async def wait_cancelled(self) -> bool:
        """Wait until the channel is cancelled (True) or ends another way (False)."""
        self._watch()
        await self._finished.wait()
        return self._cancelled.is_set()

    def _watch(self) -> None:
        if self._stop_watch is not None or self._finished.is_set():
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to watch from; writes still learn of a cancel from their answer
        self._stop_watch = self._transport.watch(self._on_terminal)

    def _on_terminal(self, kind: str) -> None:
        """The channel reached a terminal state (from the live watch or a write's answer)."""
        if kind == "cancelled":
            self._cancelled.set()
            self._fail_pending(ChannelCancelled(f"Channel {self.id} was cancelled by the reader."))
        elif kind == "gone":
            self._fail_pending(
                ChannelExpiredError(f"Channel {self.id} has expired or was deleted.")
            )
        else:
            self._fail_pending(ChannelEndedError(f"Channel {self.id} has ended."))
        self.ended = True
        self._finished.set()

    def _fail_pending(self, exc: Exception) -> None:
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(exc)

    # --- lifetime ----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._stop_watch is not None:
            self._stop_watch()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._flusher is not None:
            # Whatever was accepted is sent before the connections go.
            self._urgent.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flusher)
        for connection in self._owned:
            await connection.close()
        self._owned.clear()

    async def __aenter__(self) -> Channel:
        self._last_write = asyncio.get_running_loop().time()
        self._watch()
        if self._writer_timeout > 0 and self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            if isinstance(exc, ChannelCancelled) or self._cancelled.is_set():
                return exc is None or isinstance(exc, ChannelCancelled)
            if not self.ended and not self._closing:
                try:
                    if clean_exit(exc):
                        await self.end()
                    else:
                        await self.error(exc or "the backend stopped")
                except ChannelCancelled:
                    return exc is None
            return False
        finally:
            await self.close()

    async def _beat(self) -> None:
        """Keep the writer lease while the block runs, also through a long silent step."""
        interval = self._writer_timeout / 3
        loop = asyncio.get_running_loop()
        while not self._finished.is_set():
            await asyncio.sleep(max(0.5, interval - (loop.time() - self._last_write)))
            if loop.time() - self._last_write < interval or self._closing:
                continue
            try:
                await self._transport.heartbeat()
                self._last_write = loop.time()
            except ChannelCancelled:
                self._on_terminal("cancelled")
            except (ChannelEndedError, ChannelExpiredError) as exc:
                self._on_terminal("gone" if isinstance(exc, ChannelExpiredError) else "end")
            except Exception as exc:  # a transient outage: the next beat tries again
                log.warning("heartbeat for %s failed: %s", self.id, exc)

    # --- the send path -----------------------------------------------------------------------

    def _encode(self, kind: EventType, value: Any) -> Item:
        try:
            # allow_nan=False: NaN/Infinity are not JSON; readers' parsers would choke on them.
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidMessageError(
                f"A message must be a JSON value (no NaN or Infinity): {exc}."
            ) from exc
        # The HTTP body wraps a message in two levels ({"messages": [...]}); the broker takes 64.
        if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value, MAX_DEPTH):
            raise InvalidMessageError(
                f"A message may nest arrays and objects at most {MAX_DEPTH} levels deep."
            )
        size = len(text) if text.isascii() else len(text.encode())
        if size > self._max_message_bytes:
            raise MessageTooLargeError(
                f"The message is {size} bytes as JSON, over the {self._max_message_bytes} limit; "
                "split it into several writes."
            )
        item = Item(kind, value, text)
        try:
            item.packed  # noqa: B018 - checked now, so one bad value cannot sink a whole batch
        except ValueError as exc:
            raise InvalidMessageError(f"The message cannot be stored: {exc}.") from exc
        return item

    async def _submit(self, items: list[Item], *, terminal: bool = False) -> list[str]:
        return await self._enqueue(items, terminal=terminal)

    def _enqueue(
        self, items: list[Item], *, terminal: bool = False, linger: bool = False
    ) -> asyncio.Future[list[str]]:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure  # a write_nowait() that failed earlier
        if self._cancelled.is_set():
            raise ChannelCancelled(f"Channel {self.id} was cancelled by the reader.")
        if self._closing or self.ended:
            raise ChannelEndedError(f"Channel {self.id} has ended; nothing more can be written.")
        loop = asyncio.get_running_loop()
        if terminal:
            self._closing = True
        entry = _Entry(items, loop.create_future(), sum(len(item.json) for item in items))
        idle = self._flusher is None
        if not self._pending:
            self._opened_at = loop.time()
        self._pending.append(entry)
        if terminal:
            self._urgent.set()
        if idle:
            # Idle: an awaited write leaves at once (later ones gather behind it); a queued one
            # (write_nowait) waits the window for company, its producer is not waiting.
            if not linger:
                self._urgent.set()
            self._flusher = loop.create_task(self._flush())
        return entry.future

    def _take_batch(self) -> list[_Entry]:
        first = self._pending.popleft()
        batch = [first]
        if first.items[-1].kind != "message" or self._coalesce == 0:
            return batch
        count, size = len(first.items), first.size
        while self._pending:
            entry = self._pending[0]
            if entry.items[-1].kind != "message":
                break  # end/error go alone: the HTTP API takes them on their own route
            if count + len(entry.items) > MAX_BATCH_ITEMS or size + entry.size > MAX_BATCH_BYTES:
                break
            batch.append(self._pending.popleft())
            count += len(entry.items)
            size += entry.size
        return batch

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if not (self._urgent.is_set() or self._closing or self._coalesce == 0):
                    # Entries that arrived while the last request was out wait until their
                    # window closes, so more can join them.
                    wait = self._opened_at + self._coalesce - loop.time()
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._urgent.wait(), wait)
                if not self._pending:
                    break
                self._urgent.clear()
                batch = self._take_batch()
                if self._pending:
                    self._urgent.set()  # what did not fit leaves right after this batch
                await self._send_batch(batch)
        finally:
            self._flusher = None

    async def _send_batch(self, batch: list[_Entry]) -> None:
        items = [item for entry in batch for item in entry.items]
        try:
            ids = await self._send(items)
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            if isinstance(exc, ChannelCancelled):
                self._on_terminal("cancelled")
            elif isinstance(exc, ChannelExpiredError):
                self._on_terminal("gone")
            elif isinstance(exc, ChannelEndedError):
                self._on_terminal("end")
            return
        if items[-1].kind != "message":
            self.ended = True
            self._finished.set()
        # A duplicate answer (a retried request that had been applied) names only the last id.
        exact = len(ids) == len(items)
        start = 0
        for entry in batch:
            count = len(entry.items)
            if not entry.future.done():
                entry.future.set_result(ids[start : start + count] if exact else ids[-1:] * count)
            start += count

    async def _send(self, items: list[Item]) -> list[str]:
        """One request, retried until `retry_for` has passed. Its (writer, seq) never changes
        between attempts, so an attempt whose answer was lost is not stored twice."""
        loop = asyncio.get_running_loop()
        seq = self._seq + 1
        self._seq += len(items)
        deadline = loop.time() + self._retry_for
        delay = 0.05
        attempts = 0
        while True:
            attempts += 1
            try:
                ids = await self._transport.append(items, self.writer_id, seq)
            except TransientError as exc:
                if loop.time() >= deadline:
                    raise WriteFailedError(
                        f"Could not reach {self.broker} for {self._retry_for:g} s "
                        f"({attempts} attempts, last: {exc}); check that the broker (or Redis) "
                        "is running and reachable, or raise retry_for."
                    ) from exc
                # The last attempt is made at the deadline, not a backoff step before it.
                pause = min(delay * (0.5 + random.random()), deadline - loop.time())
                await asyncio.sleep(max(0.0, pause))
                delay = min(delay * 2, 1.0)
                continue
            self.last_event_id = ids[-1]
            self._last_write = loop.time()
            return ids


class SyncChannel:
    """The same writer for synchronous code. It runs on the process's private worker loop, so
    every SyncChannel shares one pooled connection (HTTP session or Redis client)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._background = background()

    @classmethod
    def from_token(cls, token: str | Mapping[str, Any], **options: Any) -> SyncChannel:
        runner = background()

        async def build() -> Channel:
            return Channel.from_token(token, pool=runner.pool, **options)

        return cls(runner.run(build()))

    @property
    def id(self) -> str:
        return self._channel.id

    @property
    def last_event_id(self) -> str | None:
        return self._channel.last_event_id

    @property
    def cancelled(self) -> bool:
        async def check() -> bool:
            return self._channel.cancelled

        return self._run(check())

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block until the channel is cancelled (True) or ends, or `timeout` passes (False)."""

        async def wait() -> bool:
            try:
                return await asyncio.wait_for(self._channel.wait_cancelled(), timeout)
            except TimeoutError:
                return False

        return self._run(wait())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._background.run(coroutine)

    def write(self, data: Any) -> str:
        return self._run(self._channel.write(data))

    def write_many(self, messages: Iterable[Any]) -> list[str]:
        return self._run(self._channel.write_many(list(messages)))

    def write_nowait(self, data: Any) -> Future[str]:
        """Queue a message without blocking (see Channel.write_nowait); the returned
        concurrent.futures.Future resolves to its event id."""
        result: Future[str] = Future()

        def copy(done: asyncio.Future[str]) -> None:
            if done.cancelled():
                result.cancel()
            elif done.exception() is not None:
                result.set_exception(done.exception())
            else:
                result.set_result(done.result())

        async def queue() -> None:
            self._channel.write_nowait(data).add_done_callback(copy)

        self._run(queue())
        return result

    def end(self, data: Any = None) -> str:
        return self._run(self._channel.end(data))

    def error(self, error: BaseException | str | Any) -> str:
        return self._run(self._channel.error(error))

    def close(self) -> None:
        self._run(self._channel.close())

    def __enter__(self) -> SyncChannel:
        self._run(self._channel.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return self._run(self._channel.__aexit__(exc_type, exc, traceback))


# --- one-shot helpers: `import worker.channel; await worker.channel.write(token, data)` --------
#
# Each call is its own writer (a fresh writer id, seq 1): a retry inside the call is dropped as
# a duplicate, but two calls are two writes, and calls racing each other have no set order.
# They run on the process's worker loop and share its pooled connections.


async def _one_shot(token: str | Mapping[str, Any], kind: str, value: Any, options: Any) -> str:
    runner = background()
    channel = Channel.from_token(token, pool=runner.pool, coalesce=0, **options)
    if kind == "message":
        return await channel.write(value)
    if kind == "end":
        return await channel.end(value)
    return await channel.error(value)


async def _on_worker_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    return await asyncio.wrap_future(background().submit(coroutine))


async def write(token: str | Mapping[str, Any], data: Any, **options: Any) -> str:
    """Append one message to the channel `token` names; returns its event id."""
    return await _on_worker_loop(_one_shot(token, "message", data, options))


async def end(token: str | Mapping[str, Any], data: Any = None, **options: Any) -> str:
    """End the channel `token` names, with an optional final value."""
    return await _on_worker_loop(_one_shot(token, "end", data, options))


async def error(
    token: str | Mapping[str, Any], err: BaseException | str | Any, **options: Any
) -> str:
    """Report a failure on the channel `token` names (an `error` event; the channel ends)."""
    return await _on_worker_loop(_one_shot(token, "error", error_data(err), options))


def write_sync(token: str | Mapping[str, Any], data: Any, **options: Any) -> str:
    """`write` for synchronous code (blocks until stored)."""
    return background().run(_one_shot(token, "message", data, options))


def end_sync(token: str | Mapping[str, Any], data: Any = None, **options: Any) -> str:
    return background().run(_one_shot(token, "end", data, options))


def error_sync(
    token: str | Mapping[str, Any], err: BaseException | str | Any, **options: Any
) -> str:
    return background().run(_one_shot(token, "error", error_data(err), options))
