"""The two ways a worker reaches a channel: the broker's HTTP write API, or Redis directly.

Both take whole requests `(items, writer, seq)`, so a retried request is recognised and dropped
by the channel's (writer, seq) check instead of being stored twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp

from broker.events import EventType, unpack
from worker.errors import (
    BadTokenError,
    ChannelEndedError,
    ChannelExpiredError,
    InvalidMessageError,
    MessageTooLargeError,
    WorkerError,
)

Items = Sequence[tuple[EventType, bytes]]


class TransientError(Exception):
    """Worth retrying: the request may or may not have been applied."""


class Transport(Protocol):
    async def append(self, items: Items, writer: str, seq: int) -> list[str]: ...

    async def close(self) -> None: ...


_HTTP_ERRORS: dict[int, type[WorkerError]] = {
    401: BadTokenError,
    403: BadTokenError,
    409: ChannelEndedError,
    410: ChannelExpiredError,
    413: MessageTooLargeError,
    400: InvalidMessageError,
}


class HttpTransport:
    def __init__(self, broker: str, channel_id: str, token: str, timeout: float) -> None:
        self._root = f"{broker.rstrip('/')}/v1/channels/{channel_id}"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def append(self, items: Items, writer: str, seq: int) -> list[str]:
        kind = items[-1][0]
        if kind == "message":
            path = "/messages"
            body: dict[str, Any] = {"messages": [unpack(payload) for _, payload in items]}
        else:
            path = "/end" if kind == "end" else "/error"
            body = {"data": unpack(items[0][1])}
        body.update(writer=writer, seq=seq)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(
                self._root + path, data=json.dumps(body), headers=self._headers
            ) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if status in (200, 201):
            # A duplicate (a retry of a request already applied) reports the id stored then.
            return list(payload["ids"]) or [payload["last_event_id"]]
        error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
        message = error.get("message", f"HTTP {status}")
        if status == 429 or status >= 500:
            raise TransientError(message)
        raise _HTTP_ERRORS.get(status, WorkerError)(message, error.get("code"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class RedisTransport:
    def __init__(self, redis_url: str, prefix: str, channel_id: str) -> None:
        from redis.asyncio import Redis

        self._redis: Redis = Redis.from_url(redis_url)
        self._prefix = prefix
        self._channel_id = channel_id

    async def append(self, items: Items, writer: str, seq: int) -> list[str]:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from broker.engine.base import ChannelEnded, ChannelNotFound
        from broker.engine.redis_layout import append_events

        try:
            result = await append_events(
                self._redis, self._prefix, self._channel_id, items, writer=writer, seq=seq
            )
        except ChannelNotFound as exc:
            raise ChannelExpiredError(
                f"Channel {self._channel_id} has expired or was deleted (or the worker's "
                "UNBROKEN_REDIS_PREFIX differs from the broker's)."
            ) from exc
        except ChannelEnded as exc:
            raise ChannelEndedError(
                f"Channel {self._channel_id} has ended; nothing more can be written."
            ) from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        return list(result.ids) or [str(result.last_event_id)]

    async def close(self) -> None:
        await self._redis.aclose()
