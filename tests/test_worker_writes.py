"""The worker's write path against a real broker (and a real Redis): non-finite numbers refused,
write coalescing, and the one-shot module helpers with their shared connection."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

import worker.channel
from tests.support import TEST_ADMIN, TEST_SECRET, Broker, read, redis_settings, running_broker
from worker import Channel, InvalidMessageError, SyncChannel, WriteFailedError

ROOT = Path(__file__).resolve().parent.parent
SECRET = TEST_SECRET  # running_broker's key ring


pytestmark = pytest.mark.usefixtures("no_worker_env")


async def test_non_finite_numbers_are_refused(path: tuple[Broker, dict[str, Any]]) -> None:
    broker, options = path
    opened = await broker.open()
    async with Channel.from_token(opened["channel_token"], **options) as channel:
        for bad in (float("nan"), float("inf"), {"x": [1, float("-inf")]}, 1e400):
            with pytest.raises(InvalidMessageError, match="NaN or Infinity"):
                await channel.write(bad)
            with pytest.raises(InvalidMessageError):
                await channel.write_many([1, bad])
        # As deep as the broker takes inside a request, and one level more.
        deepest: Any = "x"
        for _ in range(62):
            deepest = [deepest]
        with pytest.raises(InvalidMessageError, match="62 levels"):
            await channel.write([deepest])
        await asyncio.gather(channel.write(1.5), channel.write(deepest))
    received = await read(broker.session, opened, "poll")
    # Nothing of a refused batch was stored, and the channel still works and ends normally.
    assert received.messages == [1.5, deepest] and received.terminal == ("end", None)


async def appends_seen(broker: Broker, options: dict[str, Any]) -> int:
    """How many append operations the storage has run so far."""
    if "redis_url" in options:
        client = Redis.from_url(options["redis_url"])
        try:
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
        return sum(
            int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
        )
    async with broker.session.get(
        broker.url + "/metrics", headers={"Authorization": f"Bearer {TEST_ADMIN}"}
    ) as response:
        text = await response.text()
    pattern = r'unbroken_engine_operation_seconds_count\{[^}]*operation="append"[^}]*\} (\S+)'
    return int(sum(float(v) for v in re.findall(pattern, text)))


async def test_concurrent_writes_are_coalesced_in_order(
    path: tuple[Broker, dict[str, Any]],
) -> None:
    broker, options = path
    opened = await broker.open()
    async with Channel.from_token(opened["channel_token"], **options) as channel:
        await channel.write("first")  # an idle channel: sent at once
        before = await appends_seen(broker, options)
        ids = await asyncio.gather(*(channel.write(n) for n in range(100)))
        appends = await appends_seen(broker, options) - before
        # A loop that awaits each write is not held back by the window.
        for n in range(100, 105):
            await asyncio.wait_for(channel.write(n), 0.5)
    assert appends <= 5, f"100 concurrent writes took {appends} appends"
    received = await read(broker.session, opened, "poll")
    assert received.messages == ["first", *range(105)]
    assert [event_id for event_id, _, _ in received.events[1:101]] == ids
    assert received.terminal == ("end", None)


async def test_end_sends_what_is_pending_and_coalesce_zero_is_one_request_each(
    path: tuple[Broker, dict[str, Any]],
) -> None:
    broker, options = path
    opened, plain = await broker.open(), await broker.open()
    channel = Channel.from_token(opened["channel_token"], coalesce=1.0, **options)
    await channel.write("a")
    writes = [asyncio.ensure_future(channel.write(n)) for n in range(3)]
    await asyncio.sleep(0)  # the writes are queued behind the 1 s window ...
    await asyncio.wait_for(channel.end("bye"), 0.8)  # ... which the end does not wait for
    assert all(w.done() for w in writes)
    await channel.close()
    received = await read(broker.session, opened, "poll")
    assert received.messages == ["a", 0, 1, 2] and received.terminal == ("end", "bye")

    before = await appends_seen(broker, options)
    async with Channel.from_token(plain["channel_token"], coalesce=0, **options) as channel:
        await asyncio.gather(*(channel.write(n) for n in range(10)))
    assert await appends_seen(broker, options) - before == 11  # 10 writes and the end
    assert (await read(broker.session, plain, "poll")).messages == list(range(10))


class CountingProxy:
    """A TCP relay that counts the connections made through it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def test_one_shot_helpers_share_one_connection() -> None:
    async with running_broker() as broker:
        opened = await broker.open()
        proxy = CountingProxy(int(broker.url.rsplit(":", 1)[1]))
        url = await proxy.start()
        token = dict(opened["channel_token"], broker=url)
        # Each call is its own writer: the same value written twice is stored twice.
        for _ in range(10):
            await worker.channel.write(token, "same", broker_url=url)
        # From other event loops (a cloud function's asyncio.run per request) and sync code.
        await asyncio.to_thread(asyncio.run, worker.channel.write(token, "loop", broker_url=url))
        await asyncio.to_thread(worker.channel.write_sync, token, "sync", broker_url=url)
        await worker.channel.end(token, {"done": True}, broker_url=url)
        received = await read(broker.session, opened, "poll")
        assert received.messages == ["same"] * 10 + ["loop", "sync"]
        assert received.terminal == ("end", {"done": True})
        assert proxy.connections == 1

        failed = await broker.open()
        await asyncio.to_thread(
            worker.channel.error_sync,
            failed["channel_token"],
            ValueError("quota"),
            broker_url=broker.url,
        )
        received = await read(broker.session, failed, "poll")
        assert received.terminal == ("error", {"message": "quota", "type": "ValueError"})
        assert proxy.server is not None
        proxy.server.close()


async def test_one_shot_from_processes_are_distinct_writers(redis_url: str) -> None:
    settings = redis_settings(redis_url)
    async with running_broker(settings) as broker:
        opened = await broker.open()
        script = (
            "import json, sys, worker.channel\n"
            "token = json.loads(sys.argv[1])\n"
            "for n in range(5): worker.channel.write_sync(token, [sys.argv[2], n])\n"
        )
        env = dict(
            os.environ,
            UNBROKEN_REDIS_URL=redis_url,
            UNBROKEN_REDIS_PREFIX=settings.redis_prefix,
            UNBROKEN_SECRET=SECRET,
        )
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, json.dumps(opened["channel_token"]), name, env=env
            )
            for name in ("p1", "p2")
        ]
        assert [await asyncio.wait_for(p.wait(), 30) for p in processes] == [0, 0]
        await worker.channel.end(
            opened["channel_token"],
            None,
            redis_url=redis_url,
            redis_prefix=settings.redis_prefix,
            secret=SECRET,
        )
        async with aiohttp.ClientSession() as session:
            received = await read(session, opened, "poll")
        assert sorted(map(tuple, received.messages)) == [
            (name, n) for name in ("p1", "p2") for n in range(5)
        ]
        # Each process's own writes keep their order.
        for name in ("p1", "p2"):
            assert [n for who, n in received.messages if who == name] == list(range(5))


async def test_a_producer_that_does_not_wait_gets_its_writes_coalesced(
    path: tuple[Broker, dict[str, Any]],
) -> None:
    """An LLM-like producer: a token every ~2 ms, queued with write_nowait()."""
    broker, options = path
    opened = await broker.open()
    before = await appends_seen(broker, options)
    async with Channel.from_token(opened["channel_token"], **options) as channel:
        futures = []
        for n in range(100):
            futures.append(channel.write_nowait(n))
            await asyncio.sleep(0.002)
    # Leaving the block sent what was queued, then the end.
    appends = await appends_seen(broker, options) - before
    assert appends <= 25, f"100 queued writes took {appends} appends"
    ids = [future.result() for future in futures]
    received = await read(broker.session, opened, "poll")
    assert received.messages == list(range(100)) and received.terminal == ("end", None)
    assert [event_id for event_id, _, _ in received.events[:100]] == ids


async def test_a_failed_write_nowait_is_raised_by_the_next_call() -> None:
    async with running_broker() as broker:
        opened = await broker.open()
        channel = Channel.from_token(opened["channel_token"], broker_url=broker.url, retry_for=0.3)
        await channel.write("stored")
    # The broker is gone now: the queued write fails after retry_for, unawaited.
    lost = channel.write_nowait("lost")
    await asyncio.wait([lost])
    with pytest.raises(WriteFailedError):
        await channel.write("next")  # the earlier failure, not a silent gap
    with pytest.raises(WriteFailedError):
        lost.result()
    await channel.close()


def test_sync_write_nowait() -> None:
    async def scenario() -> None:
        async with running_broker() as broker:
            opened = await broker.open()

            def backend() -> list[str]:
                token = opened["channel_token"]
                with SyncChannel.from_token(token, broker_url=broker.url) as channel:
                    futures = [channel.write_nowait({"n": n}) for n in range(50)]
                return [future.result(timeout=10) for future in futures]

            ids = await asyncio.to_thread(backend)
            received = await read(broker.session, opened, "poll")
            assert received.messages == [{"n": n} for n in range(50)]
            assert [event_id for event_id, _, _ in received.events[:50]] == ids

    asyncio.run(scenario())


async def test_the_queued_writes_example() -> None:
    """examples/worker/queued_writes.py (shown in docs/worker.md), run as a user would."""
    async with running_broker() as broker:
        opened = await broker.open()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-W",
            "error",
            str(ROOT / "examples" / "worker" / "queued_writes.py"),
            json.dumps(opened["channel_token"]),
            env=dict(
                os.environ,
                UNBROKEN_BROKER_URL=broker.url,
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            ),
        )
        assert await asyncio.wait_for(process.wait(), 30) == 0
        received = await read(broker.session, opened, "poll")
        assert received.messages == [{"delta": f"t{n} "} for n in range(100)]
        assert received.terminal == ("end", None)
