"""A TCP proxy whose individual connections can be cut, frozen, truncated or slowed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time


class Link:
    """One proxied connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.delay = 0.0
        self.truncate = False
        self.dead = False
        self.last_active = time.monotonic()

    def abort(self) -> None:
        self.dead = True
        for writer in (self.client, self.upstream):
            writer.transport.abort()

    def cut(self) -> None:
        """Both sides see a reset."""
        self.abort()

    def half_open(self, reset_after: float = 10.0) -> None:
        """Nothing more goes through, and nobody is told: the reader must notice the silence.
        The dead link is reset much later, as a real network eventually would."""
        self.flowing.clear()
        asyncio.get_running_loop().call_later(reset_after, self.abort)

    def truncate_next(self) -> None:
        """The next answer bytes arrive only in part, then the connection resets."""
        self.truncate = True

    def slow_down(self, seconds: float) -> None:
        self.delay = seconds


class ChaosProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.links: set[Link] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.abort()
            link.flowing.set()  # so stalled pipes notice the abort and end
        # Cancelling a start_server handler makes Python 3.11 log a spurious CancelledError:
        # let the handlers end by themselves, and cancel only what is left after a while.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def pick(self, rng: random.Random) -> Link | None:
        """A connection that carried bytes in the last second (a reader's stream, a request in
        flight), not an idle pooled one, where a fault would change nothing."""
        recent = time.monotonic() - 1.0
        live = [
            link
            for link in self.links
            if not link.dead and link.flowing.is_set() and link.last_active > recent
        ]
        return rng.choice(live) if live else None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError:  # the broker is down: the client sees a reset, as it would
                client_w.transport.abort()
                return
            link = Link(client_w, upstream_w)
            self.links.add(link)
            try:
                results = await asyncio.gather(
                    self._pipe(client_r, upstream_w, link, answers=False),
                    self._pipe(upstream_r, client_w, link, answers=True),
                    return_exceptions=True,
                )
                if any(isinstance(result, BaseException) for result in results):
                    link.abort()
                else:
                    for writer in (client_w, upstream_w):
                        writer.close()
            finally:
                self.links.discard(link)
        finally:
            self._tasks.discard(task)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: Link,
        *,
        answers: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                link.last_active = time.monotonic()
                await link.flowing.wait()
                if link.delay:
                    await asyncio.sleep(link.delay)
                if answers and link.truncate:
                    writer.write(data[: max(1, len(data) // 2)])
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    link.abort()
                    return
                writer.write(data)
                await writer.drain()
            # A clean end of one direction is passed on as such (HTTP/1.0 bodies end this way).
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError):
            link.abort()
            raise
