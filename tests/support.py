"""Test support: a broker on a real socket, protocol readers, and a TCP proxy that can fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
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


@contextlib.asynccontextmanager
async def running_broker(
    settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[Broker]:
    """A broker serving on 127.0.0.1:<free port> in this process."""
    settings = (settings or Settings()).with_overrides(
        port=free_port(), secret=overrides.pop("secret", "test:secret-for-tests"), **overrides
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
        if self.events and self.events[-1][1] in ("end", "error"):
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
    """A TCP proxy in front of the broker that a test can pause, cut, or make lose responses."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.paused = asyncio.Event()
        self.paused.set()  # set = forwarding
        self.lose_responses = 0  # the next N upstream responses are swallowed, then the link cut
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    def cut(self) -> None:
        """Close every proxied connection at once (both sides see a reset)."""
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self._links.update((client_writer, up_writer))

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool
        ) -> None:
            try:
                while data := await src.read(65536):
                    await self.paused.wait()
                    if downstream and self.lose_responses:
                        self.lose_responses -= 1
                        self.cut()  # the request was applied, the answer never arrives
                        return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(
            pipe(client_reader, up_writer, False), pipe(up_reader, client_writer, True)
        )
