"""Readers that stop reading are released within a bound, live or mid-replay (issue 7.12/7.13).

A reader whose socket never drains is closed as `slow_consumer`; its handler must not then wait
forever on a write (its reconnect notice, the end of the chunked body, a WebSocket goodbye, a
replay slice), holding the connection and what it buffered. Raw sockets that never read a byte
(a frozen app) on every streaming transport, against a broker subprocess, while a writer keeps
writing. Long-poll answers are bounded by their size and need no such release.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

import aiohttp

from tests.broker_process import BrokerProcess
from tests.support import running_broker
from tests.test_replay_memory import request_for, rss_mb, stalled_reader

STALL_TIMEOUT = 2.0  # the broker's --stall-timeout here
HEARTBEAT = 1.0  # the hub checks for stalls on its heartbeat ticks, HEARTBEAT / 2 apart
MAX_PENDING = 256 * 1024
TRANSPORTS = ["sse", "chunked", "ws"]
LIVE = 3  # per transport: parked readers the hub writes to itself
REPLAYING = 2  # per transport: readers that stall while the history is replayed
MESSAGE = "x" * 50_000
MAX_MESSAGES = 100  # the channel keeps 5 MB: the broker's memory is not the history's growth
TCP_CLOSE = 7  # tcpi_state (linux/tcp_states.h) of a socket reset by its peer


async def subscribers(session: aiohttp.ClientSession, url: str, token: str) -> int:
    async with session.get(url, params={"token": token}) as response:
        assert response.status == 200
        return sum((await response.json())["subscribers"].values())


async def messages(session: aiohttp.ClientSession, url: str, token: str) -> int:
    async with session.get(url, params={"token": token}) as response:
        return int((await response.json())["messages"])


def held_by_broker(pid: int, port: int, readers: list[socket.socket]) -> int:
    """How many of `readers`' connections the broker process still has open (a descriptor)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    peers = {raw.getsockname()[1] for raw in readers}
    held = 0
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in peers:
                held += f"socket:[{inode}]" in inodes
    return held


def tcp_state(raw: socket.socket) -> int:
    return raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


async def connect(port: int, opened: dict[str, Any], transport: str) -> socket.socket:
    return await stalled_reader(port, request_for(opened, transport))


async def keep_writing(session: aiohttp.ClientSession, opened: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {opened['channel_token']['token']}"}
    while True:
        body = {"messages": [MESSAGE] * 4}
        async with session.post(opened["urls"]["messages"], json=body, headers=headers) as response:
            assert response.status == 201
        await asyncio.sleep(0.01)


async def released_within(
    broker: BrokerProcess,
    session: aiohttp.ClientSession,
    opened: dict[str, Any],
    bound: float,
    readers: list[socket.socket],
    *,
    reset: bool = True,
) -> float:
    """Seconds until no reader is subscribed and the broker holds none of their connections
    (and, with `reset`, reset every one of them: aborted, not closed after what it holds)."""
    assert broker.process is not None
    pid, status = broker.process.pid, f"{broker.url}/v1/channels/{opened['id']}"
    since, left = time.monotonic(), -1
    try:
        async with asyncio.timeout(bound):
            while (
                (left := await subscribers(session, status, opened["read_token"]))
                or held_by_broker(pid, broker.port, readers)
                or (reset and any(tcp_state(raw) != TCP_CLOSE for raw in readers))
            ):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"after {bound}s: {left} stalled readers still subscribed, the broker holds"
            f" {held_by_broker(pid, broker.port, readers)} of their connections, TCP states"
            f" {[tcp_state(raw) for raw in readers]} (7: reset by the broker)"
        ) from None
    return time.monotonic() - since


async def test_stalled_readers_are_released_within_the_stall_bound() -> None:
    env = {"UNBROKEN_MAX_PENDING_BYTES": str(MAX_PENDING)}
    args = ["--secret", "k1:slow-consumer-test", "--max-messages", str(MAX_MESSAGES)]
    args += ["--heartbeat", str(HEARTBEAT), "--stall-timeout", str(STALL_TIMEOUT)]
    async with BrokerProcess(*args, env=env) as broker, aiohttp.ClientSession() as session:
        assert broker.process is not None
        pid = broker.process.pid
        async with session.post(f"{broker.url}/v1/channels") as response:
            opened = await response.json()
        status = f"{broker.url}/v1/channels/{opened['id']}"
        token = opened["read_token"]
        assert await subscribers(session, status, token) == 0
        baseline = rss_mb(pid)

        live: list[socket.socket] = []
        replaying: list[socket.socket] = []
        writer: asyncio.Task[None] | None = None
        peak = baseline

        async def sample_rss() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample_rss())
        try:
            # Live readers: the channel is empty, nothing to replay; they park, and the hub
            # writes to their sockets until more than MAX_PENDING is unsent.
            for transport in TRANSPORTS:
                live += [await connect(broker.port, opened, transport) for _ in range(LIVE)]
            async with asyncio.timeout(5):
                while await subscribers(session, status, token) != len(live):
                    await asyncio.sleep(0.05)
            writer = asyncio.create_task(keep_writing(session, opened))
            # Their sockets fill within a second (the writer sends 200 KB a request); then they
            # are dropped at once, their connections aborted.
            released = await released_within(broker, session, opened, 5, live)
            print(f"live readers released in {released:.1f}s")
            assert not writer.done(), writer  # the writer kept writing all along

            # Readers that stall while the history (5 MB) is replayed to them, with no live
            # traffic: their handlers wait on a write; only the stall check can release them.
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            for transport in TRANSPORTS:
                replaying += [
                    await connect(broker.port, opened, transport) for _ in range(REPLAYING)
                ]
            bound = STALL_TIMEOUT + HEARTBEAT / 2 + 2.0  # 2 s to fill the sockets, on 2 cores
            released = await released_within(broker, session, opened, bound, replaying)
            print(f"replaying readers released in {released:.1f}s")
        finally:
            sampler.cancel()
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            for raw in live + replaying:
                raw.close()
        grown = peak - baseline
        print(f"RSS {baseline:.0f} MB, peak +{grown:.0f} MB")
        assert grown < 60, f"stalled readers grew the broker by {grown:.0f} MB"
        assert "Traceback" not in broker.output(), broker.output()


async def test_a_stalled_reader_of_a_channel_that_ends_is_released() -> None:
    """The end reaches a reader whose socket holds unsent bytes (fewer than max_pending, so it
    is not a slow consumer yet): the handler writes the last event and the end of the body, and
    must not then wait forever for the socket to take them."""
    env = {"UNBROKEN_MAX_PENDING_BYTES": str(16 * 1024 * 1024)}  # never reached here
    args = ["--secret", "k1:slow-consumer-test", "--heartbeat", str(HEARTBEAT)]
    args += ["--stall-timeout", str(STALL_TIMEOUT)]
    async with BrokerProcess(*args, env=env) as broker, aiohttp.ClientSession() as session:
        assert broker.process is not None
        async with session.post(f"{broker.url}/v1/channels") as response:
            opened = await response.json()
        status = f"{broker.url}/v1/channels/{opened['id']}"
        assert await subscribers(session, status, opened["read_token"]) == 0
        readers: list[socket.socket] = []
        try:
            for transport in TRANSPORTS:
                readers += [await connect(broker.port, opened, transport) for _ in range(LIVE)]
            async with asyncio.timeout(5):
                while await subscribers(session, status, opened["read_token"]) != len(readers):
                    await asyncio.sleep(0.05)
            headers = {"Authorization": f"Bearer {opened['channel_token']['token']}"}
            for _ in range(30):  # 6 MB: more than the kernel takes, less than max_pending
                body = {"messages": [MESSAGE] * 4}
                async with session.post(
                    opened["urls"]["messages"], json=body, headers=headers
                ) as response:
                    assert response.status == 201
            async with session.post(
                f"{status}/end", json={"data": "done"}, headers=headers
            ) as response:
                assert response.status == 201
            bound = STALL_TIMEOUT + HEARTBEAT / 2 + 2.0
            released = await released_within(broker, session, opened, bound, readers, reset=False)
            print(f"readers of the ended channel released in {released:.1f}s")
        finally:
            for raw in readers:
                raw.close()
        assert "Traceback" not in broker.output(), broker.output()


async def test_a_stream_that_ends_closes_its_connection() -> None:
    """A reader that reads everything sees the connection close after the end (readers
    reconnect anyway): it must not idle on as a keep-alive connection the broker holds."""
    async with running_broker() as broker:
        opened = await broker.open()
        headers = {"Authorization": f"Bearer {opened['channel_token']['token']}"}
        async with broker.session.post(
            f"{broker.url}/v1/channels/{opened['id']}/end", json={"data": "done"}, headers=headers
        ) as response:
            assert response.status == 201
        port = int(broker.url.rsplit(":", 1)[1])
        for transport in ("sse", "chunked"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request_for(opened, transport))
                answer = await asyncio.wait_for(reader.read(), 5)  # until the broker closes
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert b"event: end" in answer and answer.endswith(b"0\r\n\r\n"), answer
