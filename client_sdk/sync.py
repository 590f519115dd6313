"""Blocking wrappers for scripts: the async client runs on a private event loop in a thread."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final

import aiohttp

from client_sdk.api import create_channel
from client_sdk.channel import Channel, subscribe
from client_sdk.models import Event

_DONE: Final = object()
_QUEUE_SIZE: Final = 1000  # bounded: a slow script slows the reader instead of growing memory


class SyncChannelIterator(Iterator[Any]):
    """Iterates message data (or whole events with `events=True`) until the channel ends.

    Raises what the async reader raises (e.g. `ChannelErrorEvent`). Use it as a context manager,
    or call `close()`, to stop early; `end_data` and `last_event_id` are set as it goes.
    """

    def __init__(
        self,
        broker_url: str | None,
        channel_or_token: str | Mapping[str, Any],
        *,
        events: bool = False,
        **options: Any,
    ) -> None:
        self._args = (broker_url, channel_or_token)
        self._options = options
        self._events = events
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._finished = False
        self.end_data: Any = None
        self.ended = False
        self.state = "open"
        self.last_event_id: str | None = None
        self.channel: Channel | None = None
        self._thread = threading.Thread(target=self._run, name="client_sdk-sync", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        try:
            async with subscribe(*self._args, **self._options) as channel:
                self.channel = channel
                async for event in channel.events():
                    self.last_event_id = event.id
                    await self._put(event if self._events else event.data)
                self.end_data, self.ended = channel.end_data, channel.ended
                self.state = channel.state
            await self._put(_DONE)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # handed to the consuming thread, which re-raises it
            await self._put(exc)

    async def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                await asyncio.sleep(0.01)

    def __iter__(self) -> SyncChannelIterator:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            self._thread.join()
            raise item
        return item

    def cancel(self, reason: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Stop the channel's producer (see `Channel.cancel`); iteration then ends."""
        loop, channel = self._loop, self.channel
        if loop is None or channel is None or loop.is_closed():
            raise RuntimeError("the channel is not being read (not started yet, or finished)")
        future = asyncio.run_coroutine_threadsafe(channel.cancel(reason, timeout=timeout), loop)
        return future.result(timeout + 1)

    def close(self) -> None:
        """Stop reading and wait for the reader thread to finish."""
        self._finished = True
        self._stop.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # the loop closed in between: the thread is done anyway
        self._thread.join()

    def __enter__(self) -> SyncChannelIterator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def iter_channel_sync(
    broker_url: str | None,
    channel_or_token: str | Mapping[str, Any],
    **options: Any,
) -> SyncChannelIterator:
    """`for data in iter_channel_sync(url, token): ...` in a plain script.

    Takes the options of `subscribe`; `events=True` yields `Event`s instead of data.
    """
    return SyncChannelIterator(broker_url, channel_or_token, **options)


def open_channel_sync(
    broker_url: str, *, name: str | None = None, app_key: str | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """Open a channel and return the broker's open response (id, read_token, channel_token)."""

    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            return await create_channel(
                session, broker_url, name=name, app_key=app_key, open_timeout=timeout
            )

    return asyncio.run(run())


__all__ = ["Event", "SyncChannelIterator", "iter_channel_sync", "open_channel_sync"]
