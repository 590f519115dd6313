"""Redis mode across processes: brokers started as `python -m broker serve`, a worker writing
straight into Redis, and readers that resume on a different broker than they started on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.redis_server import free_port
from tests.support import Received, read
from worker.channel import Channel

ROOT = Path(__file__).resolve().parent.parent
SECRET = "k1:multi-broker-test-secret"


@contextmanager
def broker_process(redis_url: str, prefix: str, *extra: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--port",
            str(port),
            "--redis",
            redis_url,
            "--redis-prefix",
            prefix,
            "--secret",
            SECRET,
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=ROOT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


async def wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(150):
        try:
            async with session.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"broker at {url} did not start")


async def reading(
    session: aiohttp.ClientSession, url: str, opened: dict[str, Any], transport: str
) -> None:
    """Until the broker at `url` counts a `transport` reader on the channel."""
    status_url = f"{url}/v1/channels/{opened['id']}"
    headers = {"Authorization": f"Bearer {opened['read_token']}"}
    async with asyncio.timeout(10):
        while True:
            async with session.get(status_url, headers=headers) as response:
                if (await response.json())["subscribers"][transport] >= 1:
                    return
            await asyncio.sleep(0.02)


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def on_broker(opened: dict[str, Any], url: str) -> dict[str, Any]:
    """The same channel's read URLs, but pointing at another broker."""
    old = opened["channel_token"]["broker"]
    ws_old, ws_new = old.replace("http", "ws", 1), url.replace("http", "ws", 1)
    urls = {k: v.replace(ws_old, ws_new).replace(old, url) for k, v in opened["urls"].items()}
    return {**opened, "urls": urls}


@pytest.mark.parametrize("transport", ["sse", "ws", "poll", "chunked"])
async def test_resume_on_another_broker_with_a_worker_writing_to_redis(
    redis_url: str, prefix: str, session: aiohttp.ClientSession, transport: str
) -> None:
    with broker_process(redis_url, prefix) as first, broker_process(redis_url, prefix) as second:
        await asyncio.gather(wait_healthy(session, first), wait_healthy(session, second))
        async with session.post(f"{first}/v1/channels") as response:
            opened = await response.json()
        # The worker never talks to a broker: it appends to the stream itself.
        channel = Channel.from_token(
            opened["channel_token"], redis_url=redis_url, redis_prefix=prefix, secret=SECRET
        )
        reader = asyncio.create_task(read(session, opened, transport, stop_after=100))
        await reading(session, first, opened, transport)  # then the writes arrive live
        for n in range(100):
            await channel.write(n)
        received: Received = await asyncio.wait_for(reader, 20)
        assert received.messages == list(range(100))

        writing = asyncio.create_task(_finish(channel, 100, 250))
        resumed = await asyncio.wait_for(
            read(session, on_broker(opened, second), transport, received), 20
        )
        await writing
        assert resumed.messages == list(range(250))
        assert resumed.terminal == ("end", "done")
        assert len({event_id for event_id, _, _ in resumed.events}) == len(resumed.events)


async def _finish(channel: Channel, start: int, stop: int) -> None:
    for n in range(start, stop):
        await channel.write(n)
    await channel.end("done")
    await channel.close()


async def test_workers_share_the_port_with_so_reuseport(
    redis_url: str, prefix: str, session: aiohttp.ClientSession
) -> None:
    with broker_process(redis_url, prefix, "--workers", "2") as url:
        await wait_healthy(session, url)
        pids: set[int] = set()
        # The kernel spreads new connections over both processes; the second may still be
        # starting when the first answers, so ask until both did (bounded).
        for _ in range(400):
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/healthz") as response:
                pids.add((await response.json())["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2
        opened_on_any = []
        for _ in range(10):
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.post(f"{url}/v1/channels") as response,
            ):
                assert response.status == 201
                opened_on_any.append(await response.json())
        for opened in opened_on_any:  # whichever process opened it, any process serves it
            async with Channel.from_token(opened["channel_token"], broker_url=url) as channel:
                await channel.write("hello")
            async with aiohttp.ClientSession() as fresh:
                received = await read(fresh, opened, "poll")
            assert received.messages == ["hello"] and received.terminal == ("end", None)
    # Stopping the parent stopped its workers too: no orphan keeps the port.
    for pid in pids:
        for _ in range(100):
            if not alive(pid):
                break
            await asyncio.sleep(0.1)
        assert not alive(pid), f"worker {pid} outlived its parent"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
