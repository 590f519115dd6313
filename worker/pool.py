"""Connections shared by the channels of one process.

A `Pool` hands out one HTTP session and one Redis client (with one pub/sub connection) per
configuration, instead of one per channel or per call. The process-wide pool lives on a private
event loop thread, which `SyncChannel` and the module-level helpers (`worker.channel.write` ...)
use, so a cloud function that calls `asyncio.run()` per request still reuses its connections.
The thread is started on first use and again in a forked child (a fork copies no threads).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from worker.transport import HttpConnection, RedisConnection

T = TypeVar("T")


class Pool:
    """Connections keyed by their configuration; used from one event loop only."""

    def __init__(self) -> None:
        self._http: dict[float, HttpConnection] = {}
        self._redis: dict[tuple[str, str, float], RedisConnection] = {}

    def http(self, timeout: float) -> HttpConnection:
        connection = self._http.get(timeout)
        if connection is None:
            connection = self._http[timeout] = HttpConnection(timeout)
        return connection

    def redis(self, url: str, prefix: str, timeout: float) -> RedisConnection:
        key = (url, prefix, timeout)
        connection = self._redis.get(key)
        if connection is None:
            connection = self._redis[key] = RedisConnection(url, prefix, timeout)
        return connection

    async def close(self) -> None:
        connections: list[HttpConnection | RedisConnection] = [
            *self._http.values(),
            *self._redis.values(),
        ]
        self._http.clear()
        self._redis.clear()
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close()


class Background:
    """The private event loop thread and its pool."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pool = Pool()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="unbroken-worker", daemon=True
        )
        self.thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on the private loop and wait: for synchronous callers."""
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("a blocking worker call cannot run on the worker's own loop")
        return self.submit(coroutine).result()

    def stop(self) -> None:
        """Close the pool, stop and close the loop: nothing is left for the garbage collector
        to warn about at interpreter exit (an unclosed loop, its self-pipe, a pending task)."""
        if self.loop.is_closed():
            return
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self.submit(self._shutdown()).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:  # cancel watches and heartbeats of channels never closed
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.close()
        await self.loop.shutdown_asyncgens()


_lock = threading.Lock()
_background: Background | None = None


def background() -> Background:
    global _background
    with _lock:
        if _background is None or _background.pid != os.getpid():
            _background = Background()
        return _background


@atexit.register
def _stop_background() -> None:
    # Close pooled sockets politely at exit, so neither Redis nor aiohttp reports them leaked.
    if _background is not None and _background.pid == os.getpid():
        _background.stop()
