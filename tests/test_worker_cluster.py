"""The worker on the distributed URL forms (issue 8): writing straight into a Redis Cluster and
into a Sentinel-managed primary with the broker's URL, and learning of a cancel over sharded
pub/sub (SSUBSCRIBE on the shard that owns each channel)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from broker.config import Settings
from broker.engine.redis_client import connect
from broker.engine.redis_layout import channel_keys
from tests.redis_cluster import Cluster, SentinelPair, redis_cluster, redis_sentinel, tools_missing
from tests.support import TEST_SECRET, Broker, read, running_broker
from worker import Channel, ChannelCancelled

pytestmark = pytest.mark.skipif(tools_missing() is not None, reason=str(tools_missing()))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster() as deployment:
        yield deployment


@pytest.fixture(scope="module")
def sentinel_pair() -> Iterator[SentinelPair]:
    with redis_sentinel() as deployment:
        yield deployment


@pytest.fixture(params=["cluster", "sentinel"])
async def deployment(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, str, str]]:
    url = request.getfixturevalue("cluster" if request.param == "cluster" else "sentinel_pair").url
    prefix = f"w{uuid.uuid4().hex[:8]}"
    settings = Settings(engine="redis", redis_url=url, redis_prefix=prefix)
    async with running_broker(settings) as broker:
        yield broker, url, prefix


async def names_on_every_shard(url: str, prefix: str) -> list[str]:
    """Two channel names per primary of a cluster (any two names elsewhere)."""
    client: Any = connect(url)
    try:
        await client.ping()
        if not isinstance(client, RedisCluster):
            return ["ch-a", "ch-b"]
        by_node: dict[str, list[str]] = {}
        n = 0
        while len(by_node) < 3 or min(len(v) for v in by_node.values()) < 2:
            name = f"ch-{n}"
            n += 1
            slot = key_slot(channel_keys(prefix, name).meta.encode())
            node = client.nodes_manager.get_node_from_slot(slot).name
            if len(by_node.setdefault(node, [])) < 2:
                by_node[node].append(name)
        return [name for names in by_node.values() for name in names]
    finally:
        await client.aclose()


async def wait_subscribed(url: str, lives: list[str]) -> None:
    client: Any = connect(url)
    try:
        await client.ping()  # a Cluster client learns the slot map
        for live in lives:
            for _ in range(250):
                if isinstance(client, RedisCluster):
                    node = client.get_node_from_key(live)
                    counts = await client.execute_command(
                        "PUBSUB SHARDNUMSUB", live, target_nodes=node
                    )
                else:
                    counts = await client.execute_command("PUBSUB SHARDNUMSUB", live)
                # [channel, count] as sent, or [(channel, count)] as redis-py parses it.
                flat = (
                    [x for pair in counts for x in pair]
                    if counts and isinstance(counts[0], (list, tuple))
                    else counts
                )
                if len(flat) == 2 and int(flat[1]) >= 1:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"nobody subscribed to {live}")
    finally:
        await client.aclose()


async def test_redis_direct_writer_on_every_shard_writes_and_hears_the_cancel(
    deployment: tuple[Broker, str, str],
) -> None:
    broker, url, prefix = deployment
    names = await names_on_every_shard(url, prefix)
    opened = [await broker.open(name=name) for name in names]
    options = {"redis_url": url, "redis_prefix": prefix, "secret": TEST_SECRET}
    writers = [Channel.from_token(o["channel_token"], **options) for o in opened]
    for n, writer in enumerate(writers):
        await asyncio.gather(*(writer.write([n, m]) for m in range(20)))  # one coalesced batch
    waiters = [asyncio.create_task(w.wait_cancelled()) for w in writers]
    # Once every watch is subscribed, the cancels below can only arrive through pub/sub.
    await wait_subscribed(url, [channel_keys(prefix, o["id"]).live for o in opened])
    for channel in opened:
        pressed = time.monotonic()
        async with broker.session.post(
            f"{broker.url}/v1/channels/{channel['id']}/cancel",
            headers={"Authorization": f"Bearer {channel['read_token']}"},
        ) as response:
            assert response.status == 201
        waiter = waiters[opened.index(channel)]
        assert await asyncio.wait_for(waiter, 5) is True
        assert time.monotonic() - pressed < 0.5
    for n, writer in enumerate(writers):
        with pytest.raises(ChannelCancelled):
            await writer.write("after")
        await writer.close()
        received = await read(broker.session, opened[n], "poll")
        assert received.messages == [[n, m] for m in range(20)]
        assert received.events[-1][1] == "cancelled"
