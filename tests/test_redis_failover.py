"""The Redis engine through the failures of one server: frozen, restarted, demoted behind a
"managed primary endpoint". Real redis-server processes, started by the tests on free ports."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from broker.engine.base import Limits
from broker.engine.redis import RedisEngine
from broker.events import Event
from tests.redis_cluster import Standalone, need_redis_tools, redis_standalone
from tests.support import FaultyProxy, redis_settings, running_broker


@pytest.fixture
def server() -> Iterator[Standalone]:
    need_redis_tools()
    with redis_standalone() as deployment:
        yield deployment


class Seen:
    def __init__(self) -> None:
        self.events: dict[str, list[str]] = {}

    def __call__(self, channel_id: str, events: list[Event] | None) -> None:
        if events is not None:
            self.events.setdefault(channel_id, []).extend(e.id for e in events)


async def until(predicate: Any, timeout: float) -> float:
    """Seconds it took (fails after `timeout`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_frozen_redis_is_noticed_within_5_s(server: Standalone) -> None:
    """A Redis that stops answering (SIGSTOP; a half-open connection looks the same) is
    noticed by the live feed's health check, which then reconnects and catches up."""
    seen = Seen()
    engine = RedisEngine(Limits(), server.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    await engine.start(seen)
    try:
        await engine.create("f")
        await engine.watch("f")
        ids = (await engine.append("f", [("message", b"\x01")])).ids
        await until(lambda: seen.events.get("f") == ids, 5)
        await asyncio.sleep(0.5)  # the connection is idle: the worst case for noticing
        server.freeze()
        try:
            noticed = await until(lambda: engine.feed.reconnects >= 1, 10)
        finally:
            server.thaw()
        assert noticed < 5.0, f"a silent feed went unnoticed for {noticed:.1f}s"
        ids += (await engine.append("f", [("message", b"\x02")])).ids
        await until(lambda: seen.events.get("f") == ids, 10)
    finally:
        await engine.close()


async def test_after_a_restart_stale_pooled_connections_are_retried(server: Standalone) -> None:
    """Every pooled connection is dead after a Redis restart; requests must not get 5xx."""
    async with running_broker(redis_settings(server.url)) as broker:

        async def open_many(n: int) -> list[int]:
            async def one() -> int:
                async with broker.session.post(f"{broker.url}/v1/channels") as response:
                    await response.read()
                    return response.status

            return list(await asyncio.gather(*(one() for _ in range(n))))

        assert await open_many(20) == [201] * 20  # fills the pool with several connections
        server.server.kill()
        await asyncio.sleep(1.0)  # down for a second, as a restart is
        server.restart()
        assert await open_many(20) == [201] * 20


async def test_a_demoted_primary_behind_an_endpoint_is_left(server: Standalone) -> None:
    """A managed "primary endpoint" moves to the new primary, while the old one lives on as a
    replica: pooled connections to it answer READONLY and must be dropped, not retried on."""
    with redis_standalone() as other:
        replica_of = ("REPLICAOF", "127.0.0.1", str(server.server.port))
        plain: Any = __import__("redis.asyncio", fromlist=["Redis"]).Redis
        other_client = plain.from_url(other.url)
        old_client = plain.from_url(server.url)
        await other_client.execute_command(*replica_of)
        async with FaultyProxy(server.server.port) as endpoint:
            seen = Seen()
            engine = RedisEngine(
                Limits(), f"redis://127.0.0.1:{endpoint.port}/0", prefix="t", max_connections=4
            )
            await engine.start(seen)
            try:
                await engine.create("d")
                await engine.watch("d")
                ids: list[str] = []
                for n in range(1, 11):
                    ids += (await engine.append("d", [("message", b"\x01")], writer="w", seq=n)).ids
                deadline = time.monotonic() + 10
                while (await other_client.info("replication"))["master_link_status"] != "up" or (
                    await other_client.info("replication")
                )["master_repl_offset"] < (await old_client.info("replication"))[
                    "master_repl_offset"
                ]:
                    assert time.monotonic() < deadline, "the replica did not catch up"
                    await asyncio.sleep(0.05)
                # Switch over: promote, demote the old one (it stays up), move the endpoint.
                await other_client.execute_command("REPLICAOF", "NO", "ONE")
                await old_client.execute_command("REPLICAOF", "127.0.0.1", str(other.server.port))
                endpoint.upstream_port = other.server.port
                for n in range(11, 31):
                    ids += (await engine.append("d", [("message", b"\x02")], writer="w", seq=n)).ids
                page = await engine.read("d", None, 100)
                assert [e.id for e in page.events] == ids
            finally:
                await engine.close()
                await other_client.aclose()
                await old_client.aclose()
