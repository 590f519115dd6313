"""The worker library against a real broker: typed errors, the sync API, batches."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest

from tests.support import read, running_broker
from worker import (
    BadTokenError,
    Channel,
    ChannelEndedError,
    ChannelExpiredError,
    InvalidMessageError,
    MessageTooLargeError,
    SyncChannel,
    WriteFailedError,
)


async def test_typed_errors_say_what_happened() -> None:
    async with running_broker(idle_ttl=1) as broker:
        ended = await broker.open()
        async with Channel.from_token(ended["channel_token"], broker_url=broker.url) as channel:
            await channel.write("x")
        again = Channel.from_token(ended["channel_token"], broker_url=broker.url)
        with pytest.raises(ChannelEndedError, match="has ended"):
            await again.write("late")
        await again.close()

        writer = Channel.from_token((await broker.open())["channel_token"], broker_url=broker.url)
        with pytest.raises(MessageTooLargeError, match="split it"):
            await writer.write("x" * (300 * 1024))
        with pytest.raises(InvalidMessageError):
            await writer.write({"not json": object()})
        with pytest.raises(InvalidMessageError):
            await writer.write(2**70)

        expiring = await broker.open()
        await asyncio.sleep(2.2)
        with pytest.raises(ChannelExpiredError):
            await Channel.from_token(expiring["channel_token"], broker_url=broker.url).write(
                "too late"
            )
        await writer.close()

    with pytest.raises(BadTokenError, match="read token"):
        Channel.from_token(ended["read_token"], broker_url=broker.url)


async def test_unreachable_broker_fails_after_the_retry_deadline() -> None:
    async with running_broker() as broker:
        opened = await broker.open()
    # The broker is gone: nothing listens on its port any more.
    channel = Channel.from_token(opened["channel_token"], broker_url=broker.url, retry_for=1)
    started = time.monotonic()
    with pytest.raises(WriteFailedError, match="for 1 s"):
        await channel.write("lost?")
    assert 1 <= time.monotonic() - started < 5
    await channel.close()


async def test_batches_keep_order_and_ids_increase() -> None:
    async with running_broker() as broker:
        opened = await broker.open()
        async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
            first = await channel.write_many(range(5))
            second = await channel.write_many(range(5, 8))
        assert len(first) == 5 and len(second) == 3
        received = await read(broker.session, opened, "poll")
        assert received.messages == list(range(8))
        assert [event_id for event_id, _, _ in received.events[:8]] == first + second


async def test_sync_channel_from_a_script() -> None:
    async with running_broker() as broker:
        opened = await broker.open()
        script = (
            "import json, sys\n"
            "from worker import SyncChannel\n"
            "with SyncChannel.from_token(json.loads(sys.argv[1])) as ch:\n"
            "    ch.write({'n': 1}); ch.write_many([{'n': 2}, {'n': 3}])\n"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            json.dumps(opened["channel_token"]),
            env=dict(os.environ, UNBROKEN_BROKER_URL=broker.url),
        )
        assert await asyncio.wait_for(process.wait(), 30) == 0
        received = await read(broker.session, opened, "sse")
        assert received.messages == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert received.terminal == ("end", None)


def test_sync_channel_reports_an_exception_as_error_event() -> None:
    async def scenario() -> None:
        async with running_broker() as broker:
            opened = await broker.open()

            def backend() -> None:
                with SyncChannel.from_token(
                    opened["channel_token"], broker_url=broker.url
                ) as channel:
                    channel.write("partial")
                    raise ValueError("quota exceeded")

            with pytest.raises(ValueError):
                await asyncio.to_thread(backend)
            received = await read(broker.session, opened, "poll")
            assert received.messages == ["partial"]
            assert received.terminal == (
                "error",
                {"message": "quota exceeded", "type": "ValueError"},
            )

    asyncio.run(scenario())


async def test_leaving_the_block_by_cancellation_or_exit_tells_the_reader() -> None:
    async with running_broker() as broker:
        cancelled, exited = await broker.open(), await broker.open()

        wrote = asyncio.Event()

        async def backend() -> None:
            async with Channel.from_token(
                cancelled["channel_token"], broker_url=broker.url
            ) as channel:
                await channel.write("partial")
                wrote.set()
                await asyncio.sleep(60)  # cancelled here, e.g. because the request went away

        task = asyncio.create_task(backend())
        await asyncio.wait_for(wrote.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        received = await read(broker.session, cancelled, "poll")
        assert received.messages == ["partial"]
        assert received.terminal == (
            "error",
            {"message": "CancelledError", "type": "CancelledError"},
        )

        script = (
            "import json, sys\n"
            "from worker import SyncChannel\n"
            "with SyncChannel.from_token(json.loads(sys.argv[1])) as ch:\n"
            "    ch.write('bye'); sys.exit(0)\n"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            json.dumps(exited["channel_token"]),
            env=dict(os.environ, UNBROKEN_BROKER_URL=broker.url),
        )
        assert await asyncio.wait_for(process.wait(), 30) == 0
        received = await read(broker.session, exited, "poll")
        assert received.messages == ["bye"] and received.terminal == ("end", None)
