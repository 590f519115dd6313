"""Graceful shutdown of a real broker process: SIGTERM tells connected readers to reconnect,
the process exits 0 within its shutdown timeout, and (Redis engine) a reader resumes on another
broker from its last id without losing or repeating anything."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp

from tests.broker_process import BrokerProcess
from worker.channel import Channel

SHUTDOWN_TIMEOUT = 3.0
ENV = {"UNBROKEN_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)}
SECRET = "k1:" + "shared-secret-" * 3
# Bounded waits everywhere, so a broker that stops answering fails the test instead of hanging it.
HTTP_TIMEOUT = aiohttp.ClientTimeout(sock_connect=5, sock_read=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def read_sse_event(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next SSE event (comments and `retry:` skipped) as {id?, event, data}."""
    fields: dict[str, Any] = {}
    while True:
        line = (await asyncio.wait_for(stream.content.readline(), 10)).decode().rstrip("\n")
        if line == "" and fields.get("data") is not None:
            return fields
        if line.startswith(("id: ", "event: ")):
            key, _, value = line.partition(": ")
            fields[key] = value
        elif line.startswith("data: "):
            fields["data"] = json.loads(line[6:])
        elif not line and stream.content.at_eof():
            raise EOFError("stream closed")


async def test_sigterm_tells_readers_to_reconnect_and_exits_in_time() -> None:
    async with (
        BrokerProcess("--engine", "memory", env=ENV) as broker,
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
    ):
        async with http.post(broker.url + "/v1/channels", json={"name": "draining"}) as response:
            opened = await response.json()
        read, base = opened["read_token"], broker.url + "/v1/channels/draining"
        async with (
            http.get(base + "/events", headers=bearer(read)) as sse,
            http.ws_connect(base.replace("http", "ws", 1) + f"/ws?token={read}") as ws,
        ):
            worker = Channel.from_token(opened["channel_token"], broker_url=broker.url, timeout=5)
            event_id = await worker.write("before shutdown")
            await worker.close()
            assert await read_sse_event(sse) == {
                "id": event_id,
                "event": "message",
                "data": "before shutdown",
            }
            assert (await ws.receive_json(timeout=10))["id"] == event_id

            started = time.monotonic()
            broker.terminate()
            notice = await read_sse_event(sse)
            assert notice == {"event": "reconnect", "data": {"reason": "shutdown"}}
            assert await ws.receive_json(timeout=10) == {"type": "reconnect", "reason": "shutdown"}
            close = await ws.receive(timeout=10)
            assert close.type == aiohttp.WSMsgType.CLOSE and close.data == 1012  # service restart
            code = await broker.wait(SHUTDOWN_TIMEOUT + 2.0)
            elapsed = time.monotonic() - started
    assert code == 0, broker.output()
    assert elapsed < SHUTDOWN_TIMEOUT + 2.0


async def test_reader_resumes_on_another_broker_without_loss(redis_url: str) -> None:
    prefix = f"shutdown-{uuid.uuid4().hex[:8]}"
    args = ("--redis", redis_url, "--redis-prefix", prefix, "--secret", SECRET)
    first, second = BrokerProcess(*args, env=ENV), BrokerProcess(*args, env=ENV)
    async with first, second, aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        async with http.post(first.url + "/v1/channels", json={}) as response:
            opened = await response.json()
        channel, read = opened["id"], opened["read_token"]
        # The worker writes to Redis directly: writes go on while the first broker is down.
        worker = Channel.from_token(
            opened["channel_token"],
            redis_url=redis_url,
            redis_prefix=prefix,
            secret=SECRET,
            timeout=5,
        )
        received: list[Any] = []
        last_id = None
        async with http.get(
            f"{first.url}/v1/channels/{channel}/events", headers=bearer(read)
        ) as sse:
            for n in range(5):
                await worker.write(n)
            while len(received) < 5:
                event = await read_sse_event(sse)
                received.append(event["data"])
                last_id = event["id"]
            first.terminate()
            for n in range(5, 10):  # written while the reader is being told to go
                await worker.write(n)
            while (event := await read_sse_event(sse))["event"] != "reconnect":
                received.append(event["data"])
                last_id = event["id"]
            assert event["data"] == {"reason": "shutdown"}
        assert await first.wait(SHUTDOWN_TIMEOUT + 2.0) == 0, first.output()

        await worker.end("done")
        await worker.close()
        assert last_id is not None
        headers = {**bearer(read), "Last-Event-ID": last_id}
        async with http.get(f"{second.url}/v1/channels/{channel}/events", headers=headers) as sse:
            while (event := await read_sse_event(sse))["event"] != "end":
                received.append(event["data"])
            assert event["data"] == "done"
    assert received == list(range(10))
