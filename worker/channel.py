"""Write to a channel from a backend.

    from worker.channel import Channel

    async with Channel.from_token(token) as ch:   # token: what the client passed along
        await ch.write({"delta": "Hel"})
        await ch.write({"delta": "lo"})
    # leaving the block ends the channel; an exception is reported as an `error` event

Writes go to Redis when a Redis URL is given (or UNBROKEN_REDIS_URL is set), otherwise to the
broker's HTTP write API named in the token. Each request carries this writer's id and a sequence
number, so a retry after a lost response is dropped by the channel instead of stored twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import uuid
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from broker.events import EventType, dumps, pack
from broker.tokens import TokenError, read_claims_unverified
from worker.errors import BadTokenError, InvalidMessageError, MessageTooLargeError, WriteFailedError
from worker.transport import HttpTransport, Items, RedisTransport, TransientError, Transport

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # the broker's default limit


def parse_token(token: str | Mapping[str, Any]) -> tuple[str, str, str]:
    """(broker URL, channel id, write JWT) from a channel token in any of its forms:
    the object the client serialized, its JSON text, or the bare write JWT."""
    value: Any = token
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise BadTokenError("The channel token is not valid JSON.") from exc
    if isinstance(value, Mapping):
        jwt = value.get("token")
        if not isinstance(jwt, str):
            raise BadTokenError(
                "The channel token has no 'token' field; pass the object the client's "
                "channel serialized to (JSON.stringify(channel))."
            )
    elif isinstance(value, str):
        jwt, value = value.strip(), {}
    else:
        raise BadTokenError(f"A channel token is a str or a dict, not {type(token).__name__}.")
    try:
        claims = read_claims_unverified(jwt)
    except TokenError as exc:
        raise BadTokenError(exc.message) from exc
    if claims.scope != "write":
        raise BadTokenError(
            "This is the client's read token; the backend needs the channel token "
            "(the serialized channel)."
        )
    broker = str(value.get("broker") or claims.url)
    return broker, claims.channel, jwt


def clean_exit(exc: BaseException | None) -> bool:
    """Leaving a `with` block normally (or by `sys.exit(0)`) ends the channel; leaving it by any
    other exception, cancellation and Ctrl-C included, is reported to the reader as an error:
    either way the app learns the stream is over instead of waiting for the idle expiry."""
    return exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None))


class Channel:
    """An async writer for one channel. Not shared between event loops."""

    def __init__(
        self,
        broker: str,
        channel_id: str,
        token: str,
        *,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        retries: int = 5,
        timeout: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.id = channel_id
        self.broker = broker
        self.writer_id = "w-" + uuid.uuid4().hex[:20]
        self.ended = False
        self.last_event_id: str | None = None
        self._retries = retries
        self._max_message_bytes = max_message_bytes
        self._seq = 0
        self._lock = asyncio.Lock()
        self._transport: Transport
        if redis_url:
            prefix = redis_prefix or os.environ.get("UNBROKEN_REDIS_PREFIX") or "unbroken"
            self._transport = RedisTransport(redis_url, prefix, channel_id)
        else:
            self._transport = HttpTransport(broker, channel_id, token, timeout)

    @classmethod
    def from_token(
        cls,
        token: str | Mapping[str, Any],
        *,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        retries: int = 5,
        timeout: float = 10.0,
    ) -> Channel:
        broker, channel_id, jwt = parse_token(token)
        return cls(
            broker,
            channel_id,
            jwt,
            redis_url=redis_url or os.environ.get("UNBROKEN_REDIS_URL") or None,
            redis_prefix=redis_prefix,
            retries=retries,
            timeout=timeout,
        )

    async def write(self, data: Any) -> str:
        """Append one message; returns its event id."""
        return (await self._send([("message", self._encode(data))]))[-1]

    async def write_many(self, messages: Iterable[Any]) -> list[str]:
        """Append a batch atomically; returns their event ids."""
        items: list[tuple[EventType, bytes]] = [("message", self._encode(m)) for m in messages]
        if not items:
            return []
        return await self._send(items)

    async def end(self, data: Any = None) -> str:
        """End the channel, with an optional final value the client receives with `end`."""
        event_id = (await self._send([("end", self._encode(data))]))[-1]
        self.ended = True
        return event_id

    async def error(self, error: BaseException | str | Any) -> str:
        """Report a failure: the client gets an `error` event and the channel ends."""
        if isinstance(error, BaseException):
            data: Any = {
                "message": str(error) or type(error).__name__,
                "type": type(error).__name__,
            }
        elif isinstance(error, str):
            data = {"message": error}
        else:
            data = error
        event_id = (await self._send([("error", self._encode(data))]))[-1]
        self.ended = True
        return event_id

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if not self.ended:
                if clean_exit(exc):
                    await self.end()
                else:
                    await self.error(exc or "the backend stopped")
        finally:
            await self.close()

    def _encode(self, value: Any) -> bytes:
        try:
            size = len(dumps(value).encode())
        except (TypeError, ValueError) as exc:
            raise InvalidMessageError(f"A message must be a JSON value: {exc}.") from exc
        if size > self._max_message_bytes:
            raise MessageTooLargeError(
                f"The message is {size} bytes as JSON, over the {self._max_message_bytes} limit; "
                "split it into several writes."
            )
        try:
            return pack(value)
        except ValueError as exc:
            raise InvalidMessageError(f"The message cannot be stored: {exc}.") from exc

    async def _send(self, items: Items) -> list[str]:
        # Requests of one writer are serialized: the channel drops any seq not above the last.
        async with self._lock:
            seq = self._seq + 1
            self._seq += len(items)
            delay = 0.1
            for attempt in range(self._retries + 1):
                try:
                    ids = await self._transport.append(items, self.writer_id, seq)
                    self.last_event_id = ids[-1]
                    return ids
                except TransientError as exc:
                    if attempt == self._retries:
                        raise WriteFailedError(
                            f"Could not reach {self.broker} after {attempt + 1} attempts ({exc}); "
                            "check that the broker (or Redis) is running and reachable."
                        ) from exc
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)
            raise AssertionError("unreachable")


class SyncChannel:
    """The same writer for synchronous code: it runs a Channel on a private event loop thread."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self._loop = loop

    @classmethod
    def from_token(cls, token: str | Mapping[str, Any], **options: Any) -> SyncChannel:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="unbroken-worker", daemon=True).start()

        async def build() -> Channel:
            return Channel.from_token(token, **options)

        channel = asyncio.run_coroutine_threadsafe(build(), loop).result()
        return cls(channel, loop)

    @property
    def id(self) -> str:
        return self._channel.id

    @property
    def last_event_id(self) -> str | None:
        return self._channel.last_event_id

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def write(self, data: Any) -> str:
        return self._run(self._channel.write(data))

    def write_many(self, messages: Iterable[Any]) -> list[str]:
        return self._run(self._channel.write_many(list(messages)))

    def end(self, data: Any = None) -> str:
        return self._run(self._channel.end(data))

    def error(self, error: BaseException | str | Any) -> str:
        return self._run(self._channel.error(error))

    def close(self) -> None:
        try:
            self._run(self._channel.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if not self._channel.ended:
                if clean_exit(exc):
                    self.end()
                else:
                    self.error(exc or "the backend stopped")
        finally:
            self.close()
