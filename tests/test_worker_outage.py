"""A Redis-direct worker rides out a Redis restart and a frozen Redis (issue 7.16), against a
private redis-server with an fsynced AOF: no acknowledged write is lost, none is stored twice,
the writer finishes, and `error()` gets through too."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from broker.config import Settings
from broker.engine.redis_layout import channel_keys
from tests.redis_server import RestartableRedis
from tests.support import TEST_SECRET, Broker, read, running_broker, until
from worker import Channel, WriteFailedError

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs the redis-server binary"
)


@pytest.fixture
async def redis_and_broker(
    restartable_redis: RestartableRedis,
) -> AsyncIterator[tuple[RestartableRedis, Broker, dict[str, Any]]]:
    server = restartable_redis
    settings = Settings(engine="redis", redis_url=server.url, redis_prefix="outage")
    async with running_broker(settings) as broker:
        options = {"redis_url": server.url, "redis_prefix": "outage", "secret": TEST_SECRET}
        yield server, broker, options


class Writer:
    """An LLM-like writer: one message every 10 ms, counting what was acknowledged."""

    def __init__(self, channel: Channel, total: int) -> None:
        self.channel = channel
        self.total = total
        self.acknowledged = 0
        self.reached = asyncio.Event()
        self.mark = total // 3

    async def run(self) -> None:
        for n in range(self.total):
            await self.channel.write(n)
            self.acknowledged += 1
            if self.acknowledged == self.mark:
                self.reached.set()
            await asyncio.sleep(0.01)
        await self.channel.end("done")


async def read_all(broker: Broker, opened: dict[str, Any]) -> Any:
    # The broker's own Redis connections recover too; a read is retried until they have.
    for _ in range(100):
        received = await read(broker.session, opened, "poll")
        if received.terminal is not None:
            return received
        await asyncio.sleep(0.1)
    raise AssertionError("the channel never ended")


async def test_a_writer_rides_out_a_redis_restart(
    redis_and_broker: tuple[RestartableRedis, Broker, dict[str, Any]],
) -> None:
    server, broker, options = redis_and_broker
    opened, failing = await broker.open(), await broker.open()
    writer = Writer(Channel.from_token(opened["channel_token"], **options), 200)
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(writer.reached.wait(), 10)
    server.stop()
    # While Redis is down, a backend that fails reports it: error() retries like a write.
    failed = Channel.from_token(failing["channel_token"], **options)
    reporting = asyncio.create_task(failed.error(RuntimeError("model crashed")))
    await asyncio.sleep(8)  # the outage
    assert not task.done() and not reporting.done()
    server.start()
    await asyncio.wait_for(task, 30)
    await asyncio.wait_for(reporting, 30)
    await writer.channel.close()
    await failed.close()

    received = await read_all(broker, opened)
    assert received.messages == list(range(200)) and received.terminal == ("end", "done")
    received = await read_all(broker, failing)
    assert received.terminal == ("error", {"message": "model crashed", "type": "RuntimeError"})


async def test_a_frozen_redis_is_a_timeout_and_a_retry(
    redis_and_broker: tuple[RestartableRedis, Broker, dict[str, Any]],
) -> None:
    server, broker, options = redis_and_broker
    opened, short = await broker.open(), await broker.open()
    # A writer that may only wait 2 s learns of the freeze as an error, not after 30 s.
    impatient = Channel.from_token(short["channel_token"], timeout=1, retry_for=2, **options)
    await impatient.write("before")
    writer = Writer(Channel.from_token(opened["channel_token"], **options), 150)
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(writer.reached.wait(), 10)
    server.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(WriteFailedError):
            await impatient.write("during")
        assert time.monotonic() - started < 6
        # Past the 5 s socket timeout: the writer's request times out and is retried.
        await asyncio.sleep(7 - (time.monotonic() - started))
        assert not task.done()
    finally:
        server.signal(signal.SIGCONT)
    await asyncio.wait_for(task, 30)
    await writer.channel.close()
    await impatient.close()
    received = await read_all(broker, opened)
    assert received.messages == list(range(150)) and received.terminal == ("end", "done")


async def test_readonly_replica_is_retried_until_promoted(
    redis_and_broker: tuple[RestartableRedis, Broker, dict[str, Any]],
) -> None:
    primary, broker, options = redis_and_broker
    replica = RestartableRedis()
    replica.start()
    try:
        client = Redis.from_url(replica.url)
        # Redis 7 delays a diskless full sync by 5 s (repl-diskless-sync-delay) to batch
        # replicas; this test has one. The wait below is for the sync itself, not a guess at
        # its length: a replica that had not synced would be promoted without the channel and
        # the write would fail with "channel expired", which is not what is tested here.
        primary_client = Redis.from_url(primary.url)
        await primary_client.config_set("repl-diskless-sync-delay", 0)
        await primary_client.aclose()
        await client.replicaof("127.0.0.1", primary.port)
        opened = await broker.open()
        meta = channel_keys("outage", opened["id"]).meta

        async def synced() -> bool:
            return bool(await client.exists(meta))

        await until(synced, "synced to the replica", timeout=30)

        async def readonly_refusals() -> int:
            return int(
                (await client.info("errorstats")).get("errorstat_READONLY", {}).get("count", 0)
            )

        # The worker is pointed at the replica, as after a failover that has not finished.
        writer = Channel.from_token(
            opened["channel_token"], **{**options, "redis_url": replica.url}
        )
        write = asyncio.create_task(writer.write("after the failover"))

        async def retried() -> bool:  # refused with READONLY, and tried again, and again
            return await readonly_refusals() >= 3

        await until(retried, "refused three times", timeout=20)
        assert not write.done()
        await client.replicaof("NO", "ONE")  # promoted
        event_id = await asyncio.wait_for(write, 10)
        await writer.end()
        await writer.close()
        entries = await client.xrange(channel_keys("outage", opened["id"]).events)
        assert entries[0][0].decode() == event_id
        await client.aclose()
    finally:
        replica.cleanup()


def test_redis_errors_that_heal_are_retryable() -> None:
    from redis import exceptions as e

    from worker.transport import _redis_transient

    for exc in (
        e.ReadOnlyError("READONLY You can't write against a read only replica."),
        e.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        e.MasterDownError("MASTERDOWN Link with MASTER is down"),
        e.ClusterDownError("CLUSTERDOWN The cluster is down"),
        e.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        e.MovedError("3999 127.0.0.1:6381"),
        e.ResponseError("MOVED 3999 127.0.0.1:6381"),
        e.ResponseError(
            "Error running script (call to f_1): @user_script:12: @user_script: "
            "12: -READONLY You can't write against a read only replica."
        ),
        e.ConnectionError("Connection refused"),
        e.TimeoutError("Timeout reading from socket"),
    ):
        assert _redis_transient(exc), exc
    for exc in (
        e.AuthenticationError("invalid password"),
        e.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        e.NoScriptError("NOSCRIPT"),
    ):
        assert not _redis_transient(exc), exc
