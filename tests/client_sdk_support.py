"""Helpers for the Python client tests: a real broker in a subprocess, a TCP proxy that can cut
or silently stall connections, and a writer over the HTTP write API. No tests here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.redis_server import free_port
from tests.support import FaultyProxy

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT = 0.5  # short, so the client's watchdog (2.5 heartbeats) acts within seconds


@contextlib.contextmanager
def broker_process(*extra: str, heartbeat: float = HEARTBEAT) -> Iterator[str]:
    """`python -m broker serve --engine memory` on a free port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "UNBROKEN_OPEN_RATE": "1000", "UNBROKEN_OPEN_BURST": "10000",
           "UNBROKEN_MAX_OPEN_RATE": "0"}  # fmt: skip
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


# One fault-injecting proxy for every test (tests/support.py).
Proxy = FaultyProxy
