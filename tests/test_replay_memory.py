"""Issue 7.12: replay memory is bounded. Readers that resume from the start of a large channel and
never read must not make the broker buffer the channel for each of them; a stalled replaying
reader is dropped (slow_consumer) like a stalled live one, and closing them gives the memory back.

Measured on a broker subprocess (its VmRSS from /proc), with raw sockets that never read, on
every transport and both engines.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.broker_process import BrokerProcess
from tests.support import Received, read

MESSAGE_BYTES = 50_000
MESSAGES = 300  # 15 MB of history
READERS_PER_TRANSPORT = 5
TRANSPORTS = ["sse", "chunked", "ws", "poll"]
STALL_TIMEOUT = 3  # seconds, the broker's --stall-timeout in this test


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerProcess]:
    args = ["--secret", "k1:replay-memory-test", "--admin-token", "admin", "--heartbeat", "1"]
    args += ["--stall-timeout", str(STALL_TIMEOUT)]
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        args += ["--redis", url, "--redis-prefix", f"test-{uuid.uuid4().hex[:10]}"]
    async with BrokerProcess(*args) as running:
        yield running


async def stalled_reader(port: int, request: bytes) -> socket.socket:
    """Send `request`, then never read (a tiny receive window, so the broker's side fills)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(raw, request)
    return raw


def request_for(opened: dict[str, Any], transport: str) -> bytes:
    path = {"sse": "events", "chunked": "stream", "ws": "ws", "poll": "poll"}[transport]
    target = f"/v1/channels/{opened['id']}/{path}?token={opened['read_token']}"
    if transport == "poll":
        target += "&timeout=0&limit=10000"
    head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if transport == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        head += (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
    return (head + "\r\n").encode()


async def stats(session: aiohttp.ClientSession, broker: BrokerProcess) -> dict[str, Any]:
    headers = {"Authorization": "Bearer admin"}
    async with session.get(f"{broker.url}/v1/admin/stats", headers=headers) as response:
        assert response.status == 200
        return dict(await response.json())


async def test_stalled_replaying_readers_hold_bounded_memory(broker: BrokerProcess) -> None:
    assert broker.process is not None
    pid = broker.process.pid
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{broker.url}/v1/channels") as response:
            opened = await response.json()
        write = f"{broker.url}/v1/channels/{opened['id']}/messages"
        headers = {"Authorization": f"Bearer {opened['channel_token']['token']}"}
        for batch in range(MESSAGES // 15):
            body = {"messages": [f"{batch}-{n}-" + "x" * MESSAGE_BYTES for n in range(15)]}
            async with session.post(write, json=body, headers=headers) as response:
                assert response.status == 201
        # One reader that does read gets everything (and warms whatever caches there are).
        complete = await asyncio.wait_for(
            read(session, opened, "sse", Received(), stop_after=MESSAGES), 60
        )
        assert len(complete.messages) == MESSAGES
        baseline = rss_mb(pid)

        sockets = [
            await stalled_reader(broker.port, request_for(opened, transport))
            for transport in TRANSPORTS
            for _ in range(READERS_PER_TRANSPORT)
        ]
        try:
            # While they are connected, the broker's memory stays far below one copy of the
            # history per reader (20 x 15 MB), and the streaming ones (not poll: one answer
            # each) are dropped as slow consumers once their sockets took nothing for a while.
            peak = baseline
            dropped: dict[str, float] = {}
            async with asyncio.timeout(STALL_TIMEOUT + 30):
                # Until the stalled streams were dropped (sampling the memory meanwhile).
                while dropped.get("unbroken_slow_consumers_total", 0) < 3 * READERS_PER_TRANSPORT:
                    peak = max(peak, rss_mb(pid))
                    dropped = (await stats(session, broker))["totals"]
                    await asyncio.sleep(0.1)
            peak = max(peak, rss_mb(pid))
        finally:
            for raw in sockets:
                raw.close()
        grown = peak - baseline
        print(f"baseline {baseline:.0f} MB, peak {peak:.0f} MB (+{grown:.0f} MB)")
        assert grown < 80, f"replay to stalled readers took {grown:.0f} MB"

        # And the broker still serves everyone else.
        again = await asyncio.wait_for(
            read(session, opened, "ws", Received(), stop_after=MESSAGES), 60
        )
        assert len(again.messages) == MESSAGES
        after = rss_mb(pid)
        print(f"after close {after:.0f} MB")
        assert after - baseline < 80
