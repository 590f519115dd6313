"""One way to turn a Redis URL into a redis-py asyncio client, for the broker and the worker.

    client = connect("redis://127.0.0.1:6379/0")

Replies stay bytes (payloads are msgpack), and a burst of commands waits for a free pooled
connection instead of failing with "Too many connections".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis

POOL_TIMEOUT = 10.0  # seconds a command waits for a free pooled connection before failing
MAX_CONNECTIONS = 64

# Called with (command name, seconds) after every command a client sends (not pipelines).
CommandObserver = Callable[[str, float], None]


class ObservedRedis(Redis):
    """A Redis client that can report the latency of each command (for /metrics)."""

    command_observer: CommandObserver | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        observer = self.command_observer
        if observer is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            observer(_command_name(args[0]), time.perf_counter() - start)


def _command_name(name: Any) -> str:
    return (name.decode() if isinstance(name, bytes) else str(name)).upper()


def connect(url: str, *, max_connections: int = MAX_CONNECTIONS, **opts: Any) -> ObservedRedis:
    """A client for `url` (not connected yet: the first command connects)."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_TIMEOUT, **opts
    )
    # from_pool: the client owns the pool and closes it with itself.
    client = cast(ObservedRedis, ObservedRedis.from_pool(pool))
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        raise ValueError("the Redis client must return bytes (decode_responses=False)")
    return client
