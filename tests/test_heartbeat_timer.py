"""Heartbeats come from one timer per broker process, written to idle sockets only, and each
idle reader still hears something at least every `heartbeat` seconds (the clients' watchdogs
count on it), over SSE, chunked HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from broker.config import Settings
from tests.support import reader_url, running_broker, until_subscribed

HEARTBEAT = 0.4


async def arrivals(
    session: aiohttp.ClientSession, opened: dict[str, Any], transport: str, seconds: float
) -> tuple[list[float], int, int]:
    """(arrival times from connect, heartbeats, messages) on one reader for `seconds`."""
    times: list[float] = []
    beats = messages = 0
    url = reader_url(opened, transport)
    started = time.monotonic()
    with_deadline = asyncio.timeout(seconds)
    try:
        async with with_deadline:
            if transport == "ws":
                async with session.ws_connect(url) as ws:
                    async for frame in ws:
                        times.append(time.monotonic() - started)
                        kind = frame.json()["type"]
                        beats += kind == "ping"
                        messages += kind == "message"
            else:
                async with session.get(url) as response:
                    async for line in response.content:
                        if line.startswith(b":"):
                            times.append(time.monotonic() - started)
                            beats += 1
                        elif line.startswith(b"event: message"):
                            times.append(time.monotonic() - started)
                            messages += 1
    except TimeoutError:
        assert with_deadline.expired()
    return times, beats, messages


async def test_every_idle_reader_hears_a_heartbeat_within_each_interval() -> None:
    async with running_broker(Settings(heartbeat=HEARTBEAT)) as broker:
        opened = await broker.open()
        results = await asyncio.gather(
            *(arrivals(broker.session, opened, t, 2.3) for t in ("sse", "chunked", "ws"))
        )
    for times, beats, _ in results:
        assert beats >= 4, times
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        # Scheduling on a busy machine may add a little; a missed tick would add 0.2 s or more.
        assert max(gaps) < HEARTBEAT + 0.15, times


async def test_a_reader_receiving_events_gets_no_heartbeats() -> None:
    """Before the shared timer each reader's handler woke every `heartbeat` seconds and wrote
    one, even to a reader that had just received events."""
    async with running_broker(Settings(heartbeat=HEARTBEAT)) as broker:
        opened = await broker.open()
        token = opened["channel_token"]["token"]
        readers = [
            asyncio.create_task(arrivals(broker.session, opened, t, 2.0)) for t in ("sse", "ws")
        ]
        await until_subscribed(broker, opened, count=2)
        for n in range(16):  # an event every 0.1 s, well within every heartbeat interval
            async with broker.session.post(
                opened["urls"]["messages"],
                json={"data": n},
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == 201
            await asyncio.sleep(0.1)
        results = await asyncio.gather(*readers)
    for _, beats, messages in results:
        assert messages == 16
        assert beats <= 1  # at most one, at the very start (before the first event)
