"""Stop generation, writer side (issue 10.1): an LLM-like writer stops within 100 ms of the
reader's cancel, over HTTP and straight on Redis, and learns of it live while silent."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from broker.engine.redis_layout import channel_keys
from tests.support import (
    TEST_SECRET,
    Broker,
    read,
    redis_settings,
    running_broker,
    until,
    until_subscribed,
)
from worker import Channel, ChannelCancelled, ChannelEndedError, Pool, SyncChannel

pytestmark = pytest.mark.usefixtures("no_worker_env")


async def cancel(broker: Broker, opened: dict[str, Any], reason: str | None = "stop") -> float:
    """The reader's Stop button; returns when it was pressed (before the request)."""
    pressed = time.monotonic()
    async with broker.session.post(
        f"{broker.url}/v1/channels/{opened['id']}/cancel",
        json={"reason": reason},
        headers={"Authorization": f"Bearer {opened['read_token']}"},
    ) as response:
        assert response.status == 201, await response.text()
    return pressed


async def until_watching(broker: Broker, options: dict[str, Any], opened: dict[str, Any]) -> None:
    """Until the writer's cancel watch is live: its `?only=terminal` stream is a subscriber of
    the broker (HTTP), or its connection is subscribed to the channel's pub/sub (Redis)."""
    if "redis_url" not in options:
        await until_subscribed(broker, opened)
        return
    admin = Redis.from_url(options["redis_url"])
    live = channel_keys(options["redis_prefix"], opened["id"]).live

    async def subscribed() -> bool:
        # SSUBSCRIBE on Redis >= 7 (the scripts SPUBLISH), SUBSCRIBE before: either counts.
        pairs = await admin.execute_command("PUBSUB SHARDNUMSUB", live)
        pairs += await admin.execute_command("PUBSUB NUMSUB", live)
        return any(int(count) >= 1 for _, count in pairs)

    try:
        await until(subscribed, "subscribed to the channel's pub/sub")
    finally:
        await admin.aclose()


async def test_llm_writer_stops_within_100_ms_of_cancel(
    path: tuple[Broker, dict[str, Any]],
) -> None:
    broker, options = path
    opened = await broker.open()
    written = 0
    started = asyncio.Event()
    stopped_at = 0.0

    async def generate() -> None:
        nonlocal written, stopped_at
        async with Channel.from_token(opened["channel_token"], **options) as channel:
            while True:  # a token every 20 ms until the reader says stop
                await channel.write({"delta": f"t{written} "})
                written += 1
                if written == 10:
                    started.set()
                await asyncio.sleep(0.02)
        # The block ended cleanly: ChannelCancelled was suppressed, no error was reported.
        stopped_at = time.monotonic()
        assert channel.cancelled

    task = asyncio.create_task(generate())
    await asyncio.wait_for(started.wait(), 10)
    pressed = await cancel(broker, opened)
    await asyncio.wait_for(task, 5)
    assert stopped_at - pressed < 0.1, f"stopped {stopped_at - pressed:.3f} s after the cancel"

    received = await read(broker.session, opened, "sse")
    assert received.events[-1][1:] == ("cancelled", {"reason": "stop"})
    assert len(received.messages) == written  # nothing after the cancel, nothing lost


async def test_a_silent_writer_learns_of_the_cancel_live(
    path: tuple[Broker, dict[str, Any]],
) -> None:
    broker, options = path
    opened = await broker.open()
    async with Channel.from_token(opened["channel_token"], **options) as channel:
        await channel.write("thinking...")
        assert not channel.cancelled
        waiter = asyncio.create_task(channel.wait_cancelled())
        await until_watching(broker, options, opened)  # so the cancel is pushed, not read back
        assert not waiter.done()
        pressed = await cancel(broker, opened, None)
        assert await asyncio.wait_for(waiter, 5) is True
        assert time.monotonic() - pressed < 0.1
        assert channel.cancelled
        with pytest.raises(ChannelCancelled):  # refused locally, no request needed
            await channel.write("too late")
    received = await read(broker.session, opened, "poll")
    assert received.messages == ["thinking..."]
    assert received.events[-1][1:] == ("cancelled", {"reason": None})

    # A channel that ends normally: wait_cancelled answers False.
    ended = await broker.open()
    async with Channel.from_token(ended["channel_token"], **options) as channel:
        waiter = asyncio.create_task(channel.wait_cancelled())
        await channel.write("done")
    assert await asyncio.wait_for(waiter, 5) is False

    # Cancelled before the writer even started: its first write says so.
    early = await broker.open()
    await cancel(broker, early)
    writer = Channel.from_token(early["channel_token"], **options)
    with pytest.raises(ChannelCancelled) as raised:
        await writer.write("hello?")
    assert isinstance(raised.value, ChannelEndedError) and raised.value.code == "channel_cancelled"
    await writer.close()


async def test_sync_channel_sees_the_cancel(path: tuple[Broker, dict[str, Any]]) -> None:
    broker, options = path
    opened = await broker.open()
    writing = threading.Event()

    def backend() -> int:
        written = 0
        with SyncChannel.from_token(opened["channel_token"], **options) as channel:
            while not channel.cancelled:
                channel.write(written)
                written += 1
                if written == 5:
                    writing.set()
                time.sleep(0.02)
            assert channel.wait_cancelled(timeout=1) is True
        return written

    task = asyncio.create_task(asyncio.to_thread(backend))
    assert await asyncio.to_thread(writing.wait, 10)
    await cancel(broker, opened)
    written = await asyncio.wait_for(task, 5)
    received = await read(broker.session, opened, "poll")
    assert received.messages == list(range(written))
    assert received.events[-1][1] == "cancelled"


async def test_example_backend_streams_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from examples.backend.app import create_app

    async with running_broker() as broker:
        monkeypatch.setenv("UNBROKEN_BROKER_URL", broker.url)
        opened = await broker.open()
        async with TestClient(TestServer(create_app())) as backend:
            response = await backend.post(
                "/chat", json={"channel": opened["channel_token"], "prompt": "hi"}
            )
            assert response.status == 202
            first = await read(broker.session, opened, "sse", stop_after=2)
            await cancel(broker, opened)
            received = await read(broker.session, opened, "sse", first)
            bad = await backend.post(
                "/chat", json={"channel": dict(opened["channel_token"], broker="http://evil:1")}
            )
            assert bad.status == 400 and "UNBROKEN_BROKER_URL" in (await bad.json())["error"]
    assert 2 <= len(received.messages) < 12  # the answer has 12 words: it stopped early
    assert received.events[-1][1:] == ("cancelled", {"reason": "stop"})


async def test_the_block_keeps_the_writer_lease(path: tuple[Broker, dict[str, Any]]) -> None:
    """A writer inside `async with` that works 8 s without writing (a tool call) keeps its
    5 s lease by heartbeats; the same silence outside a block loses it."""
    broker, options = path
    kept, lost = await broker.open(writer_timeout=5), await broker.open(writer_timeout=5)
    assert kept["channel_token"]["writer_timeout"] == 5

    async def inside_block() -> None:
        async with Channel.from_token(kept["channel_token"], **options) as channel:
            await channel.write("before the tool call")
            await asyncio.sleep(8)  # the silent step being tested
            await channel.write("after it")

    async def without_block() -> None:
        channel = Channel.from_token(lost["channel_token"], **options)
        await channel.write("before the tool call")
        await asyncio.sleep(8)
        with pytest.raises(ChannelEndedError):
            await channel.write("after it")
        await channel.close()

    # The apps read meanwhile (the broker checks the leases of channels being read).
    readers = [asyncio.create_task(read(broker.session, o, "sse")) for o in (kept, lost)]
    await asyncio.gather(inside_block(), without_block())
    received = await asyncio.wait_for(readers[0], 10)
    assert received.messages == ["before the tool call", "after it"]
    assert received.terminal == ("end", None)
    received = await asyncio.wait_for(readers[1], 10)
    assert received.messages == ["before the tool call"]
    assert received.terminal is not None and received.terminal[0] == "error"
    assert received.terminal[1]["code"] == "writer_timeout"


async def test_many_watched_channels_do_not_starve_writes() -> None:
    """110 writers sharing one Pool over HTTP each hold a cancel watch (a long-lived SSE
    request); their writes still go out at once."""

    async with running_broker(open_burst=200, admin_token="admin-for-worker-tests") as broker:
        opened = [await broker.open() for _ in range(110)]
        pool = Pool()
        writers = [
            Channel.from_token(o["channel_token"], broker_url=broker.url, pool=pool) for o in opened
        ]
        watches = [asyncio.create_task(w.wait_cancelled()) for w in writers]
        for _ in range(250):  # until the broker has accepted every watch
            async with broker.session.get(
                broker.url + "/metrics",
                headers={"Authorization": "Bearer admin-for-worker-tests"},
            ) as response:
                metrics = await response.text()
            found = re.search(r'unbroken_reader_requests_total\{transport="sse"\} (\S+)', metrics)
            if found and float(found.group(1)) >= 110:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the watches did not connect")
        await asyncio.wait_for(asyncio.gather(*(w.write("hi") for w in writers)), 3)
        await asyncio.wait_for(asyncio.gather(*(w.end() for w in writers)), 3)
        assert await asyncio.wait_for(asyncio.gather(*watches), 5) == [False] * 110
        for writer in writers:
            await writer.close()
        await pool.close()


async def test_one_pubsub_connection_watches_every_channel_of_a_pool(redis_url: str) -> None:
    settings = redis_settings(redis_url)
    async with running_broker(settings) as broker:
        admin = Redis.from_url(redis_url)
        before = len(await admin.client_list(_type="pubsub"))
        opened = [await broker.open() for _ in range(20)]
        pool = Pool()
        options = {
            "redis_url": redis_url,
            "redis_prefix": settings.redis_prefix,
            "secret": TEST_SECRET,
        }
        writers = [Channel.from_token(o["channel_token"], pool=pool, **options) for o in opened]
        waiters = [asyncio.create_task(w.wait_cancelled()) for w in writers]
        lives = [channel_keys(settings.redis_prefix, o["id"]).live for o in opened]
        for _ in range(250):  # until every watch is subscribed
            counts = await admin.execute_command("PUBSUB SHARDNUMSUB", *lives)
            flat = [x for pair in counts for x in pair] if isinstance(counts[0], tuple) else counts
            if all(int(n) >= 1 for n in flat[1::2]):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the watches did not subscribe")
        assert len(await admin.client_list(_type="pubsub")) - before == 1
        await cancel(broker, opened[7])
        assert await asyncio.wait_for(waiters[7], 5) is True
        assert not any(w.done() for n, w in enumerate(waiters) if n != 7)
        for writer in writers:
            await writer.close()
        for waiter in waiters:
            waiter.cancel()
        await pool.close()
        await admin.aclose()
