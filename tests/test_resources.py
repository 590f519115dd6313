"""Malformed HTTP, idle and slow connections, the connection cap, the open-files limit and
WebSocket readers that never read, against a broker process (issue 7.10, 7.11, 7.13)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.broker_process import BrokerProcess

SECRET = "test:secret-for-resources"


async def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return everything the broker answers before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


MALFORMED = {
    "header line over 8 KiB": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"<script>" * 2500 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "200 header fields": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: <script>\r\n" % i for i in range(200))
        + b"\r\n",
        431,
        "headers_too_large",
    ),
    "10,000 query parameters": (
        b"GET /healthz?"
        + b"&".join(b"p%d=<script>" % i for i in range(10_000))
        + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "unknown method": (b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501, "method_not_implemented"),
    "garbage method": (b"G<script>T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "TLS on the HTTP port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, "bad_request"),
    "bad HTTP version": (b"GET /healthz HTTP/9.9<script>\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "bad chunk size": (
        b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"<script>\r\nabc\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    "bad Content-Length": (
        b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nContent-Length: <script>\r\n\r\n",
        400,
        "bad_request",
    ),
    "Content-Length with chunked": (
        b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
}


async def test_malformed_requests_get_json_errors_and_one_log_line() -> None:
    async with BrokerProcess("--secret", SECRET) as broker:
        for label, (data, status, code) in MALFORMED.items():
            raw = await exchange(broker.port, data)
            got_status, headers, body = parse_response(raw)
            assert headers["content-type"].startswith("application/json"), (label, raw[:300])
            error = json.loads(body)["error"]
            assert (got_status, error["code"]) == (status, code), label
            assert b"<script>" not in raw, label  # the input is never echoed
        # A bad chunk size after the head, while the handler reads the body: a JSON 400 too
        # (aiohttp left that handler waiting for the body forever).
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        async with aiohttp.ClientSession() as session:  # the head has been handled by now
            async with session.get(broker.url + "/healthz") as response:
                assert response.status == 200
        writer.write(b"zz\r\nabc\r\n0\r\n\r\n")
        status, _, body = parse_response(await asyncio.wait_for(reader.read(), 5))
        writer.close()
        assert (status, json.loads(body)["error"]["code"]) == (400, "bad_request")
        log = broker.output()
    assert "Traceback" not in log and " ERROR " not in log, log
    refusals = [line for line in log.splitlines() if "refused a malformed request" in line]
    assert len(refusals) == len(MALFORMED), log
    assert all(" INFO " in line and "<script>" not in line for line in refusals), refusals


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the broker sent before closing; fails when it keeps the connection open."""
    received = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                received += chunk
    return received


async def slowloris(port: int, deadline: float) -> float:
    """Send a request head a byte every 200 ms; seconds until the broker hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with contextlib.suppress(ConnectionError):
        for byte in head:
            if reader.at_eof() or time.monotonic() - started > deadline:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)
    await closed_within(reader, deadline)
    writer.close()
    return time.monotonic() - started


async def test_idle_and_slow_connections_are_closed_but_readers_are_not() -> None:
    args = ["--secret", SECRET, "--header-timeout", "1", "--keepalive-timeout", "2"]
    async with BrokerProcess(*args, "--heartbeat", "0.5") as broker:
        async with aiohttp.ClientSession() as session:
            async with session.post(broker.url + "/v1/channels") as response:
                opened = await response.json()
            events_url = f"{opened['urls']['events']}?token={opened['read_token']}"
            async with session.get(events_url) as stream:
                assert stream.status == 200
                # 40 sockets that never send a byte and 20 slowloris heads.
                idle = [await asyncio.open_connection("127.0.0.1", broker.port) for _ in range(40)]
                slow = [asyncio.create_task(slowloris(broker.port, 10)) for _ in range(20)]
                answers = await asyncio.gather(*(closed_within(r, 5) for r, _ in idle))
                assert all(b" 408 " in a and b"request_timeout" in a for a in answers)
                assert max(await asyncio.gather(*slow)) < 4
                for _, writer in idle:
                    writer.close()
                # A keep-alive connection idle past keepalive_timeout is closed; the streaming
                # reader, older than both timeouts, is still served (heartbeats, then a message).
                reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                started = time.monotonic()
                answer = await closed_within(reader, 6)
                assert b" 200 " in answer and 1.5 < time.monotonic() - started < 5
                writer.close()
                token = opened["channel_token"]["token"]
                async with session.post(
                    opened["urls"]["messages"],
                    json={"data": "still here"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    assert response.status == 201
                async with asyncio.timeout(5):
                    async for line in stream.content:
                        if line.startswith(b"data:") and b"still here" in line:
                            break


@contextlib.contextmanager
def soft_fd_limit(value: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(value, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def broker_fd_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open-files line")


@contextlib.asynccontextmanager
async def started_with_fd_limit(limit: int, *args: str) -> AsyncIterator[BrokerProcess]:
    broker = BrokerProcess("--secret", SECRET, *args)
    with soft_fd_limit(limit):  # inherited by the broker process
        await broker.start()
    try:
        yield broker
    finally:
        await broker.__aexit__(None, None, None)


async def test_many_idle_sockets_do_not_lock_other_clients_out() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip(f"needs an open-files hard limit of 4096 or more (it is {hard})")
    async with started_with_fd_limit(1024, "--header-timeout", "30") as broker:
        assert broker.process is not None
        soft, hard_limit = broker_fd_limits(broker.process.pid)
        assert soft == hard_limit, "the broker raises its soft limit at start-up"
        sockets = [await asyncio.open_connection("127.0.0.1", broker.port) for _ in range(1100)]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(broker.url + "/v1/channels") as response:
                    assert response.status == 201, await response.text()
        finally:
            for _, writer in sockets:
                writer.close()


async def test_connections_beyond_the_cap_get_a_503() -> None:
    async with BrokerProcess(
        "--secret", SECRET, "--max-connections", "20", "--header-timeout", "30"
    ) as broker:
        held = [await asyncio.open_connection("127.0.0.1", broker.port) for _ in range(20)]
        refused = await exchange(broker.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = parse_response(refused)
        assert (status, json.loads(body)["error"]["code"]) == (503, "too_many_connections")
        assert headers["retry-after"] == "1"
        for _, writer in held:
            writer.close()
        # Room again once they are gone (the broker notices the closes asynchronously).
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(5):
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(broker.url + "/healthz") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.05)
        log = broker.output()
    assert log.count("connection cap reached") == 1, log


async def test_websocket_reader_that_never_reads_is_released() -> None:
    env = {"UNBROKEN_MAX_PENDING_BYTES": "262144"}
    async with BrokerProcess("--secret", SECRET, env=env) as broker:
        async with aiohttp.ClientSession() as session:
            async with session.post(broker.url + "/v1/channels") as response:
                opened = await response.json()
            # A client that sends the upgrade and then never reads a byte (a frozen app).
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", broker.port))
            _, writer = await asyncio.open_connection(sock=sock)
            writer.transport.pause_reading()
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET /v1/channels/{opened['id']}/ws?token={opened['read_token']} HTTP/1.1\r\n"
                f"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await writer.drain()
            status_url = f"{broker.url}/v1/channels/{opened['id']}"
            params = {"token": opened["read_token"]}

            async def ws_readers() -> int:
                async with session.get(status_url, params=params) as response:
                    return int((await response.json())["subscribers"]["ws"])

            async with asyncio.timeout(5):
                while await ws_readers() != 1:
                    await asyncio.sleep(0.05)
            headers = {"Authorization": f"Bearer {opened['channel_token']['token']}"}
            for _ in range(60):  # 6 MB: far beyond the socket buffers and max_pending_bytes
                async with session.post(
                    opened["urls"]["messages"], json={"data": "x" * 100_000}, headers=headers
                ) as response:
                    assert response.status == 201
            # Dropped as a slow consumer; its goodbye cannot be delivered, and must not hold it.
            async with asyncio.timeout(15):
                while await ws_readers() != 0:
                    await asyncio.sleep(0.2)
            writer.close()
