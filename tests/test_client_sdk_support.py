"""Helpers for the Python client tests: a real broker in a subprocess, a TCP proxy that can cut
or silently stall connections, and a writer over the HTTP write API. No tests here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT = 0.5  # short, so the client's watchdog (2.5 heartbeats) acts within seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def broker_process(*extra: str, heartbeat: float = HEARTBEAT) -> Iterator[str]:
    """`python -m broker serve --engine memory` on a free port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "UNBROKEN_OPEN_RATE": "1000", "UNBROKEN_OPEN_BURST": "10000"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "broker", "serve", "--engine", "memory",
        "--host", "127.0.0.1", "--port", str(port), "--heartbeat", str(heartbeat), *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"the broker exited with {proc.returncode}:\n{output}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the broker did not become healthy within 20s")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


class Writer:
    """Writes a channel through the broker's HTTP write API with the write token."""

    def __init__(self, session: aiohttp.ClientSession, channel_token: dict[str, Any]) -> None:
        self._session = session
        self._base = f"{channel_token['broker']}/v1/channels/{channel_token['channel']}"
        self._headers = {"Authorization": f"Bearer {channel_token['token']}"}

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._session.post(
            f"{self._base}/{path}", json=body, headers=self._headers
        ) as resp:
            answer: dict[str, Any] = await resp.json()
            assert resp.status in (200, 201), answer
            return answer

    async def messages(self, values: Sequence[Any]) -> list[str]:
        answer = await self._post("messages", {"messages": list(values)})
        return list(answer["ids"])

    async def end(self, data: Any = None) -> None:
        await self._post("end", {"data": data})

    async def error(self, data: Any) -> None:
        await self._post("error", {"data": data})

    async def stream(
        self, start: int, stop: int, *, batch: int = 10, end: Any = None, finish: bool = True
    ) -> None:
        """Messages {"i": start} … {"i": stop-1} in batches, yielding to readers in between."""
        for first in range(start, stop, batch):
            await self.messages([{"i": i} for i in range(first, min(first + batch, stop))])
            await asyncio.sleep(0.002)
        if finish:
            await self.end(end)


def write_sync(channel_token: dict[str, Any], path: str, body: dict[str, Any]) -> None:
    """The blocking twin of `Writer`, for tests of the blocking API."""
    url = f"{channel_token['broker']}/v1/channels/{channel_token['channel']}/{path}"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {channel_token['token']}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status in (200, 201)


class Proxy:
    """A TCP proxy in front of the broker: `cut()` resets every open connection, `stall()`
    keeps them open but forwards nothing more (a silent hang); new connections work normally.
    Requests whose first bytes contain `blackhole` are accepted and never answered."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self.blackhole: bytes | None = None
        self._server: asyncio.Server | None = None
        self._live: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
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

    def cut(self) -> None:
        for client, upstream, _ in list(self._live):
            for writer in (client, upstream):
                writer.transport.abort()
        self._live.clear()

    def stall(self) -> None:
        for _, _, flowing in list(self._live):
            flowing.clear()
        self._live.clear()  # stalled connections are left alone, not cut later

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        handler = asyncio.current_task()
        if handler is not None:  # so close() can end connections held by the blackhole
            self._tasks.add(handler)
            handler.add_done_callback(self._tasks.discard)
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        flowing = asyncio.Event()
        flowing.set()
        entry = (client_w, upstream_w, flowing)
        self._live.add(entry)
        first = await client_r.read(65536)
        if self.blackhole is not None and self.blackhole in first:
            await asyncio.sleep(3600)  # hold the connection open, answer nothing
        upstream_w.write(first)
        for reader, writer in ((client_r, upstream_w), (upstream_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer, flowing))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        try:
            while data := await reader.read(65536):
                await flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
