"""Test support: a broker on a real socket, protocol readers, and a TCP proxy that can fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from broker.app import create_app
from broker.config import Settings
from tests.redis_server import free_port


@dataclass
class Broker:
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    async def open(self, **body: Any) -> dict[str, Any]:
        async with self.session.post(f"{self.url}/v1/channels", json=body or None) as response:
            assert response.status == 201, await response.text()
            return dict(await response.json())


TEST_SECRET = "test:secret-for-tests"  # running_broker's key ring
TEST_ADMIN = "admin-token-for-tests"  # the admin token of the `path` fixture's brokers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def channel_post(
    broker: Broker, opened: dict[str, Any], action: str, token: str, body: Any = None
) -> tuple[int, Any]:
    """POST /v1/channels/{id}/<action> with `token`: (status, JSON body; None for a 204).
    `body` bytes go as they are (malformed JSON), anything else but None as JSON."""
    url = f"{broker.url}/v1/channels/{opened['id']}/{action}"
    kwargs: dict[str, Any] = {"headers": bearer(token)}
    if isinstance(body, bytes):
        kwargs["data"] = body
    elif body is not None:
        kwargs["json"] = body
    async with broker.session.post(url, **kwargs) as response:
        return response.status, (await response.json() if response.status != 204 else None)


async def channel_status(broker: Broker, opened: dict[str, Any]) -> dict[str, Any]:
    """GET /v1/channels/{id} with the read token (must answer 200)."""
    url = f"{broker.url}/v1/channels/{opened['id']}"
    async with broker.session.get(url, headers=bearer(opened["read_token"])) as response:
        assert response.status == 200
        return dict(await response.json())


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10, every: float = 0.02
) -> None:
    """Wait until `condition()` holds, polling it; fail naming `what` after `timeout` s. The
    timeout is generous on purpose: it only bounds a hang on a loaded 2-core CI machine."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"still not {what} after {timeout:g} s") from None


async def until_subscribed(broker: Broker, opened: dict[str, Any], count: int = 1) -> None:
    """Wait (10 s at most) until the channel has `count` readers on this broker."""
    async with asyncio.timeout(10):
        while sum((await channel_status(broker, opened))["subscribers"].values()) < count:
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_broker(
    settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[Broker]:
    """A broker serving on 127.0.0.1:<free port> in this process (key ring TEST_SECRET)."""
    settings = (settings or Settings()).with_overrides(
        port=free_port(), secret=overrides.pop("secret", TEST_SECRET), **overrides
    )
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    session = aiohttp.ClientSession()
    try:
        yield Broker(f"http://127.0.0.1:{settings.port}", app, session)
    finally:
        await session.close()
        await runner.cleanup()


def redis_settings(redis_url: str) -> Settings:
    """Settings for the Redis engine under a prefix of its own, so tests never collide."""
    return Settings(
        engine="redis", redis_url=redis_url, redis_prefix=f"test-{uuid.uuid4().hex[:10]}"
    )


@dataclass
class Received:
    """What a reader got: (id, type, data) per event, plus protocol notices."""

    events: list[tuple[str, str, Any]] = field(default_factory=list)
    notices: list[tuple[str, Any]] = field(default_factory=list)  # gap / reconnect / ping / hb
    status: int | None = None

    @property
    def last_id(self) -> str | None:
        return self.events[-1][0] if self.events else None

    @property
    def messages(self) -> list[Any]:
        return [data for _, kind, data in self.events if kind == "message"]

    @property
    def terminal(self) -> tuple[str, Any] | None:
        if self.events and self.events[-1][1] in ("end", "error", "cancelled"):
            return self.events[-1][1], self.events[-1][2]
        return None


async def read_sse(
    session: aiohttp.ClientSession,
    url: str,
    received: Received,
    *,
    stop_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> Received:
    """Read an SSE (or chunked) stream until the server closes it, or until `stop_after` events."""
    async with session.get(
        url, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
    ) as response:
        received.status = response.status
        if response.status != 200:
            return received
        fields: dict[str, str] = {}
        async for raw in response.content:
            line = raw.decode().rstrip("\n").rstrip("\r")
            if line.startswith(":"):
                received.notices.append(("hb", line))
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
                continue
            if "event" in fields and "data" in fields:
                kind, data = fields["event"], json.loads(fields["data"])
                if "id" in fields:
                    received.events.append((fields["id"], kind, data))
                    if stop_after is not None and len(received.events) >= stop_after:
                        return received
                else:
                    received.notices.append((kind, data))
            fields = {}
    return received


async def read_ws(
    session: aiohttp.ClientSession, url: str, received: Received, *, stop_after: int | None = None
) -> Received:
    async with session.ws_connect(url) as socket:
        async for frame in socket:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            if "id" in message:
                received.events.append((message["id"], message["type"], message["data"]))
                if stop_after is not None and len(received.events) >= stop_after:
                    return received
            else:
                received.notices.append((message["type"], message))
        received.status = socket.close_code
    return received


async def read_poll(
    session: aiohttp.ClientSession,
    url: str,
    received: Received,
    *,
    stop_after: int | None = None,
    timeout: float = 5,
) -> Received:
    last = received.last_id
    while True:
        params = {"timeout": str(timeout)}
        if last:
            params["last_event_id"] = last
        async with session.get(url, params=params) as response:
            received.status = response.status
            if response.status != 200:
                return received
            batch = await response.json()
        for event in batch["events"]:
            received.events.append((event["id"], event["type"], event["data"]))
            if stop_after is not None and len(received.events) >= stop_after:
                return received
        if batch["gap"]:
            received.notices.append(("gap", batch["gap"]))
        last = batch["last_event_id"]
        if batch["ended"]:
            return received


def reader_url(opened: dict[str, Any], transport: str, last_id: str | None = None) -> str:
    path = {"sse": "events", "chunked": "stream", "ws": "ws", "poll": "poll"}[transport]
    base = opened["urls"]["ws"] if transport == "ws" else opened["urls"][path]
    url = f"{base}?token={opened['read_token']}"
    return url + (f"&last_event_id={last_id}" if last_id else "")


async def read(
    session: aiohttp.ClientSession,
    opened: dict[str, Any],
    transport: str,
    received: Received | None = None,
    stop_after: int | None = None,
) -> Received:
    """Read (or resume, when `received` has events) over one transport."""
    received = received or Received()
    # Long-poll sends its position itself on every request.
    url = reader_url(opened, transport, None if transport == "poll" else received.last_id)
    if transport in ("sse", "chunked"):
        return await read_sse(session, url, received, stop_after=stop_after)
    if transport == "ws":
        return await read_ws(session, url, received, stop_after=stop_after)
    return await read_poll(session, url, received, stop_after=stop_after)


class FaultyProxy:
    """A TCP proxy in front of the broker, for failures a real network has.

    - `cut()` resets every open connection (both sides see a reset);
    - `stall()` keeps them open but forwards nothing more (a silent hang);
    - `lose_responses = n`: the next n upstream answers are swallowed and the link cut, after the
      broker already acted on the request;
    - `blackhole = b"..."`: requests whose first bytes contain it are accepted, never answered.
    New connections always work normally. Use `async with`, or `await start()` / `await close()`.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self.lose_responses = 0
        self.blackhole: bytes | None = None
        self._server: asyncio.Server | None = None
        self._live: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultyProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cut(self) -> None:
        for client, upstream, _ in list(self._live):
            for writer in (client, upstream):
                writer.transport.abort()
        self._live.clear()

    def stall(self) -> None:
        for _, _, flowing in list(self._live):
            flowing.clear()
        self._live.clear()  # stalled connections are left alone, not cut later

    def _track(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:  # so close() can end connections held open
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._track(asyncio.current_task())
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        flowing = asyncio.Event()
        flowing.set()
        self._live.add((client_w, upstream_w, flowing))
        first = await client_r.read(65536)
        if self.blackhole is not None and self.blackhole in first:
            await asyncio.sleep(3600)  # hold the connection open, answer nothing
        upstream_w.write(first)
        self._track(asyncio.create_task(self._pipe(client_r, upstream_w, flowing, False)))
        self._track(asyncio.create_task(self._pipe(upstream_r, client_w, flowing, True)))

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
        answers: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                await flowing.wait()
                if answers and self.lose_responses:
                    self.lose_responses -= 1
                    self.cut()  # the request was applied; its answer never arrives
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
