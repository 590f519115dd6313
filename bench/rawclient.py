"""The raw-socket client the side-by-side benchmark uses against every server alike.

Readers are asyncio protocols that only count what arrives (SSE events, or the WebSocket
handshake), so what is measured is the server, not a client library. Requests go over one
keep-alive HTTP/1.1 connection each, parsed just enough to know where a response ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable

EVENT_MARK = b"\nid: "  # every SSE event of both servers carries an id line; heartbeats do not
LATENCY_MARK = b'data: {"t":'


class Reader(asyncio.Protocol):
    """One streaming subscriber: sends `request`, counts SSE events, optionally records latency
    (events whose data is {"t": <perf_counter when sent>})."""

    __slots__ = ("_tail", "count", "on_latency", "ready", "request", "transport", "upgrade")

    def __init__(
        self,
        request: bytes,
        ready: Callable[[], None],
        on_latency: Callable[[float], None] | None = None,
        upgrade: bool = False,
    ) -> None:
        self.request = request
        self.ready: Callable[[], None] | None = ready
        self.on_latency = on_latency
        self.upgrade = upgrade  # a WebSocket: ready on the 101, nothing counted
        self.count = 0
        self._tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        chunk = self._tail + data
        if self.ready is not None:
            end = chunk.find(b"\r\n\r\n")
            if end < 0:
                self._tail = chunk
                return
            status = chunk[9:12]
            if status not in (b"200", b"101"):
                raise RuntimeError(f"subscribe failed: {chunk[:200]!r}")
            self.ready()
            self.ready = None
            chunk = chunk[end + 2 :]  # keep the last \r\n so a first "id:" line is found
        if self.upgrade:
            self._tail = b""
            return
        # Only whole lines are looked at; the unfinished last line waits for the next chunk.
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._tail = chunk
            return
        self.count += chunk.count(EVENT_MARK, 0, cut)
        if self.on_latency is not None:
            now = time.perf_counter()
            start = 0
            while 0 <= (at := chunk.find(LATENCY_MARK, start, cut)):
                close = chunk.find(b"}", at, cut)
                if close < 0:
                    break
                self.on_latency(now - float(chunk[at + len(LATENCY_MARK) : close]))
                start = close
        self._tail = chunk[cut:]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_readers(
    port: int,
    requests: list[bytes],
    *,
    concurrency: int = 500,
    on_latency: Callable[[float], None] | None = None,
    upgrade: bool = False,
    timeout: float = 120.0,
) -> list[Reader]:
    """Connect one reader per request, at most `concurrency` handshakes in flight; returns once
    every one has its response head."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    readers: list[Reader] = []

    async def one(request: bytes) -> None:
        async with gate:
            done = loop.create_future()
            _, reader = await loop.create_connection(
                lambda: Reader(request, lambda: done.set_result(None), on_latency, upgrade),
                "127.0.0.1",
                port,
            )
            readers.append(reader)
            await done

    async with asyncio.timeout(timeout):
        await asyncio.gather(*(one(r) for r in requests))
    return readers


def close_all(readers: list[Reader]) -> None:
    for reader in readers:
        reader.close()


def ws_request(path: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def sse_request(path: str, port: int) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


class HttpClient:
    """One keep-alive HTTP/1.1 connection: request → (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self._writer.write(head.encode() + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = None
        chunked = False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
                data = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            return status, b"".join(parts)
        return status, await self._reader.readexactly(length or 0)

    async def json(self, method: str, path: str, body: object = None, **headers: str) -> object:
        raw = b"" if body is None else json.dumps(body).encode()
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        status, answer = await self.request(method, path, raw, headers)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {answer[:300]!r}")
        return json.loads(answer)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
