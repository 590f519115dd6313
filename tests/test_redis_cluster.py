"""Unbroken on a distributed Redis: a 6-node Cluster (3 primaries + 3 replicas) and a
primary/replica pair behind Sentinel, all started by the tests on free ports.

Two broker processes share the deployment; writers go through the HTTP API (to either broker)
and straight to Redis (the worker library); readers use SSE, WebSocket and long-poll on either
broker. Then a primary is killed with SIGKILL mid-stream: every reader must end with every event
exactly once, in order, and none may stay silent for 10 s or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from broker.engine.base import Limits
from broker.engine.durability import DurabilityTimeout
from broker.engine.redis import RedisEngine
from broker.engine.redis_client import ObservedRedis, ObservedRedisCluster, connect
from broker.engine.redis_layout import channel_keys, index_keys
from tests.broker_process import BrokerProcess
from tests.redis_cluster import (
    Cluster,
    SentinelPair,
    need_redis_tools,
    redis_cluster,
    redis_sentinel,
)
from tests.support import read, redis_settings, running_broker
from worker.channel import Channel

SECRET = "k1:cluster-test-secret"
MAX_SILENCE = 10.0  # seconds a reader may go without an event across the failover


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    need_redis_tools()
    with redis_cluster() as deployment:
        yield deployment


@pytest.fixture(scope="module")
def sentinel_pair() -> Iterator[SentinelPair]:
    need_redis_tools()
    with redis_sentinel() as deployment:
        yield deployment


# --- connect() --------------------------------------------------------------------------------


async def test_connect_understands_every_url_form() -> None:
    plain = connect("redis://:pw@127.0.0.1:6390/3?socket_timeout=2")
    assert isinstance(plain, ObservedRedis)
    kwargs = plain.connection_pool.connection_kwargs
    assert (kwargs["port"], kwargs["db"], kwargs["password"]) == (6390, 3, "pw")
    assert kwargs["socket_timeout"] == 2.0
    tls = connect("rediss://127.0.0.1:6390/0?ssl_cert_reqs=none")
    assert tls.connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"  # type: ignore[union-attr]
    for url in ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/", "redis://h:7000/?cluster=true"):
        client = connect(url)
        assert isinstance(client, ObservedRedisCluster), url
        await client.aclose()
    sentinel = connect("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/2")
    assert isinstance(sentinel, ObservedRedis)
    pool: Any = sentinel.connection_pool
    assert pool.service_name == "mymaster" and pool.connection_kwargs["db"] == 2
    assert [
        s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels
    ] == [
        26379,
        26380,
    ]
    for bad, words in (
        ("http://127.0.0.1:6379", "unsupported Redis URL scheme"),
        ("redis+sentinel://127.0.0.1:26379/", "names the service"),
        ("redis://127.0.0.1:6379/0?decode_responses=true", "bytes"),
        ("redis+cluster://127.0.0.1:x/", "bad port"),
    ):
        with pytest.raises(ValueError, match=words):
            connect(bad)
    await plain.aclose()
    await tls.aclose()
    await sentinel.aclose()


# --- the engine on a Cluster ------------------------------------------------------------------


@dataclass
class Seen:
    events: dict[str, list[str]] = field(default_factory=dict)

    def __call__(self, channel_id: str, events: Any) -> None:
        if events is not None:
            self.events.setdefault(channel_id, []).extend(e.id for e in events)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def names_on_every_shard(cluster_client: RedisCluster, prefix: str, per_shard: int) -> list[str]:
    """Channel ids whose slots are spread over every primary."""
    by_node: dict[str, list[str]] = {}
    n = 0
    while len(by_node) < 3 or min(len(v) for v in by_node.values()) < per_shard:
        name = f"ch-{n}"
        n += 1
        slot = key_slot(channel_keys(prefix, name).meta.encode())
        node = cluster_client.nodes_manager.get_node_from_slot(slot).name
        if len(by_node.setdefault(node, [])) < per_shard:
            by_node[node].append(name)
    return [name for names in by_node.values() for name in names]


async def test_engine_on_cluster_spreads_channels_index_and_feed(cluster: Cluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    seen = Seen()
    engine = RedisEngine(Limits(idle_ttl=60, retention=60), cluster.url, prefix=prefix)
    await engine.start(seen)
    try:
        client: Any = engine.redis
        assert isinstance(client, RedisCluster) and engine.feed.sharded
        names = names_on_every_shard(client, prefix, 4)
        for name in names:
            await engine.create(name)
        await asyncio.gather(*(engine.watch(name) for name in names))
        # ONE sharded-subscribe connection per primary, not one per channel.
        assert engine.stats()["feed_connections"] == 3
        ids = {name: (await engine.append(name, [("message", b"\x01")])).ids for name in names}
        await until(lambda: all(seen.events.get(n) == ids[n] for n in names))
        # The index is spread over several slots, and listing merges them.
        shard_nodes = {
            client.nodes_manager.get_node_from_slot(key_slot(k.encode())).name
            for k in index_keys(prefix)
        }
        assert len(shard_nodes) == 3
        listed = await engine.channels()
        assert sorted(c.id for c in listed) == sorted(names)
        # Live entries go out on the shard only: SPUBLISH shows in the owner's command stats.
        stats = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        assert all("cmdstat_spublish" in node_stats for node_stats in stats.values())
    finally:
        await engine.close()


async def test_index_trims_dead_entries_on_create(cluster: Cluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    engine = RedisEngine(Limits(idle_ttl=1, retention=1), cluster.url, prefix=prefix)
    await engine.start(Seen())
    try:
        client: Any = engine.redis
        for n in range(40):
            await engine.create(f"old-{n}")

        async def entries() -> int:
            return sum([await client.zcard(key) for key in index_keys(prefix)])

        assert await entries() == 40
        await asyncio.sleep(2.2)  # idle_ttl=1: all 40 expired
        for n in range(60):
            await engine.create(f"new-{n}")
        # Each create checked a few old entries of its shard: (nearly) all dead ones are gone
        # without anyone listing channels.
        assert await entries() <= 60 + 10
        assert len(await engine.channels()) == 60
        assert await entries() == 60
    finally:
        await engine.close()


async def test_feed_follows_a_slot_that_moves(cluster: Cluster) -> None:
    """Resharding moves a watched channel's slot to another primary: Redis drops the shard
    subscription there (SUNSUBSCRIBE), and the feed must re-subscribe on the new owner and
    deliver what was written meanwhile, once."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    seen = Seen()
    engine = RedisEngine(Limits(), cluster.url, prefix=prefix)
    await engine.start(seen)
    try:
        client: Any = engine.redis
        source = client.nodes_manager.get_node_from_slot(0)  # owns slots 0 .. n
        target = next(n for n in client.get_primaries() if n.name != source.name)
        name = next(
            f"moving-{n}"
            for n in range(100_000)
            if key_slot(channel_keys(prefix, f"moving-{n}").meta.encode()) == 0
        )
        await engine.create(name)
        await engine.watch(name)
        ids = (await engine.append(name, [("message", b"\x01")], writer="w", seq=1)).ids
        await until(lambda: seen.events.get(name) == ids)
        ids_of = {}
        for node in (source, target):
            ids_of[node.name] = (
                await client.execute_command("CLUSTER", "MYID", target_nodes=node)
            ).decode()
        moved = await asyncio.to_thread(
            subprocess.run,
            ["redis-cli", "--cluster", "reshard", source.name,
             "--cluster-from", ids_of[source.name], "--cluster-to", ids_of[target.name],
             "--cluster-slots", "1", "--cluster-yes"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stdout + moved.stderr
        for n in range(2, 12):
            ids += (await engine.append(name, [("message", b"\x02")], writer="w", seq=n)).ids
        await until(lambda: seen.events.get(name) == ids)
        await client.nodes_manager.initialize()
        assert client.nodes_manager.get_node_from_slot(0).name == target.name
        live = channel_keys(prefix, name).live.encode()
        links = [link.node for link in engine.feed._links.values() if live in link.watches]
        assert links == [target.name], "still subscribed on the old owner"
    finally:
        await engine.close()


async def test_subscriber_counts_are_cluster_wide(cluster: Cluster) -> None:
    settings = redis_settings(cluster.url)
    async with running_broker(settings) as first, running_broker(settings) as second:
        opened = await first.open()
        status_url = f"{second.url}/v1/channels/{opened['id']}"
        headers = {"Authorization": f"Bearer {opened['read_token']}"}

        async def counted() -> dict[str, int]:
            async with second.session.get(status_url, headers=headers) as response:
                assert response.status == 200
                return dict((await response.json())["subscribers"])

        assert (await counted())["sse"] == 0
        reading = asyncio.create_task(read(first.session, opened, "sse"))
        deadline = time.monotonic() + 5
        while (await counted())["sse"] != 1:  # the reader is on the OTHER broker
            assert time.monotonic() < deadline, "a reader on another broker is not counted"
            await asyncio.sleep(0.05)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        while (await counted())["sse"] != 0:
            assert time.monotonic() < deadline + 5, "a reader that left is still counted"
            await asyncio.sleep(0.05)


# --- brokers, writers and readers through a failover -----------------------------------------


@dataclass
class Reader:
    transport: str
    opened: dict[str, Any]
    ids: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    ended: bool = False

    def got(self, event_id: str, kind: str, data: Any) -> None:
        self.arrivals.append(time.monotonic())
        if kind == "end":
            self.ended = True
        else:
            self.ids.append(event_id)
            self.values.append(data)

    def longest_silence(self, start: float, stop: float) -> float:
        marks = [start, *[t for t in self.arrivals if start <= t <= stop], stop]
        return max(b - a for a, b in itertools.pairwise(marks))


async def read_until_end(session: aiohttp.ClientSession, reader: Reader, broker: str) -> None:
    """Read (reconnecting with the last id, as a client SDK does) until the `end` event."""
    token = reader.opened["read_token"]
    base = f"{broker}/v1/channels/{reader.opened['id']}"
    while not reader.ended:
        last = reader.ids[-1] if reader.ids else None
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            if reader.transport == "sse":
                headers = {"Authorization": f"Bearer {token}"}
                if last:
                    headers["Last-Event-ID"] = last
                timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
                async with session.get(f"{base}/events", headers=headers, timeout=timeout) as r:
                    fields: dict[str, str] = {}
                    async for raw in r.content:
                        line = raw.decode().rstrip("\r\n")
                        if line and not line.startswith(":"):
                            name, _, value = line.partition(":")
                            fields[name] = value[1:] if value.startswith(" ") else value
                        elif not line:
                            if "id" in fields and fields.get("event") in ("message", "end"):
                                reader.got(fields["id"], fields["event"], _json(fields["data"]))
                            fields = {}
            elif reader.transport == "ws":
                url = f"{base}/ws?token={token}".replace("http", "ws", 1)
                if last:
                    url += f"&last_event_id={last}"
                async with session.ws_connect(url) as socket:
                    async for frame in socket:
                        if frame.type != aiohttp.WSMsgType.TEXT:
                            break
                        message = _json(frame.data)
                        if "id" in message and message["type"] in ("message", "end"):
                            reader.got(message["id"], message["type"], message["data"])
            else:
                params = {"timeout": "5", "token": token}
                if last:
                    params["last_event_id"] = last
                async with session.get(f"{base}/poll", params=params) as r:
                    if r.status == 200:
                        for event in (await r.json())["events"]:
                            if event["type"] in ("message", "end"):
                                reader.got(event["id"], event["type"], event["data"])
        if not reader.ended:
            await asyncio.sleep(0.05)


def _json(text: str) -> Any:
    import json

    return json.loads(text)


@contextlib.asynccontextmanager
async def two_brokers(urls: list[str], prefix: str) -> AsyncIterator[list[BrokerProcess]]:
    brokers = [
        BrokerProcess(
            "--redis",
            url,
            "--redis-prefix",
            prefix,
            "--secret",
            SECRET,
            "--log-level",
            "warning",
        )
        for url in urls
    ]
    async with contextlib.AsyncExitStack() as stack:
        for broker in brokers:
            await stack.enter_async_context(broker)
        yield brokers


async def write_all(channel: Channel, count: int, pace: float) -> list[str]:
    ids = []
    for n in range(count):
        ids.append(await channel.write(n))
        await asyncio.sleep(pace)
    ids.append(await channel.end())
    await channel.close()
    return ids


async def run_failover(
    url: str,
    prefix: str,
    names: list[str],
    kill: Any,
    recovered: Any,
    second_broker_url: str | None = None,
) -> None:
    """Channels written via HTTP and via Redis, read on 3 transports via 2 brokers; kill a
    primary after a while; every reader must get everything exactly once."""
    count, pace = 60, 0.05  # ~3 s of writing per channel, the kill lands in the middle
    urls = [url, second_broker_url or url]
    async with two_brokers(urls, prefix) as brokers, aiohttp.ClientSession() as session:
        opened = []
        for n, name in enumerate(names):
            async with session.post(
                f"{brokers[n % 2].url}/v1/channels", json={"name": name}
            ) as response:
                assert response.status == 201, await response.text()
                opened.append(await response.json())
        readers: list[Reader] = []
        tasks = []
        for n, channel in enumerate(opened):
            for m, transport in enumerate(("sse", "ws", "poll")):
                reader = Reader(transport, channel)
                readers.append(reader)
                tasks.append(read_until_end(session, reader, brokers[(n + m) % 2].url))
        reading = [asyncio.create_task(t) for t in tasks]
        await asyncio.sleep(0.5)  # readers connected
        writers = []
        for n, channel in enumerate(opened):
            if n % 2:
                writer = Channel.from_token(
                    channel["channel_token"], redis_url=url, redis_prefix=prefix, secret=SECRET
                )
            else:
                writer = Channel.from_token(
                    channel["channel_token"], broker_url=brokers[n % 2].url, secret=SECRET
                )
            writers.append(asyncio.create_task(write_all(writer, count, pace)))
        started = time.monotonic()
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        kill()
        await asyncio.to_thread(recovered)
        written = await asyncio.wait_for(asyncio.gather(*writers), 60)
        await asyncio.wait_for(asyncio.gather(*reading), 60)
        stopped = time.monotonic()
    for reader, ids in zip(readers, [w for w in written for _ in range(3)], strict=True):
        channel_id = reader.opened["id"]
        assert reader.values == list(range(count)), f"{reader.transport} on {channel_id}"
        assert reader.ids == ids[:-1], f"{reader.transport} on {channel_id}: lost or duplicated"
        silence = reader.longest_silence(killed_at, stopped)
        assert silence < MAX_SILENCE, f"{reader.transport} on {channel_id} silent {silence:.1f}s"
    assert started < killed_at


async def test_cluster_failover_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    # Last in this module: it leaves the cluster with one primary without a replica.
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client: Any = connect(cluster.url)
    try:
        await client.ping()
        names = names_on_every_shard(client, prefix, 2)  # 6 channels, 2 on each primary
    finally:
        await client.aclose()
    victim = cluster.primaries()[0]
    # The second broker gets the other URL form: one seed node and ?cluster=true.
    seed = next(s.port for s in cluster.servers if s.port != victim)
    await run_failover(
        cluster.url,
        prefix,
        names,
        lambda: cluster.kill_primary(victim),
        cluster.wait_healthy,
        second_broker_url=f"redis://127.0.0.1:{seed}/0?cluster=true",
    )


async def test_durable_writes_wait_for_the_replica(sentinel_pair: SentinelPair) -> None:
    pair = sentinel_pair
    pair.wait_in_sync()
    engine = RedisEngine(
        Limits(),
        pair.url,
        prefix=f"t{uuid.uuid4().hex[:8]}",
        durable_replicas=1,
        durable_timeout_ms=300,
    )
    await engine.start(Seen())
    replica = pair.server(
        next(p for p in (pair.primary.port, pair.replica.port) if pair.role(p) == "slave")
    )
    try:
        assert engine.durability is not None and engine.durability.command[0] == "WAIT"
        await engine.create("d")
        first = await engine.append("d", [("message", b"\x01")], writer="w", seq=1)
        replica.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(DurabilityTimeout):
                await engine.append("d", [("message", b"\x02")], writer="w", seq=2)
            assert time.monotonic() - started < 2.0
        finally:
            replica.process.send_signal(signal.SIGCONT)
        # Stored, only not known durable: the writer's retry is a duplicate, not a second copy.
        retry = await engine.append("d", [("message", b"\x02")], writer="w", seq=2)
        assert retry.duplicate
        page = await engine.read("d", None, 10)
        assert [e.payload for e in page.events] == [b"\x01", b"\x02"]
        assert page.events[0].id == first.ids[0]
        later = await engine.append("d", [("message", b"\x03")], writer="w", seq=3)
        assert not later.duplicate
    finally:
        await engine.close()


async def test_switchover_to_the_replica_keeps_writes_and_feed_working(
    sentinel_pair: SentinelPair,
) -> None:
    """The old primary stays up as a read-only replica: pooled connections to it must be
    dropped (READONLY), not used until a restart."""
    pair = sentinel_pair
    pair.wait_in_sync()
    seen = Seen()
    engine = RedisEngine(Limits(), pair.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    await engine.start(seen)
    try:
        await engine.create("s")
        await engine.watch("s")
        ids = (await engine.append("s", [("message", b"\x00")])).ids
        old = pair.current_primary()
        await asyncio.to_thread(pair.switchover)
        deadline = time.monotonic() + 20
        n = 0
        assert old is not None
        while pair.current_primary() == old or pair.role(old) != "slave" or n < 20:
            n += 1
            ids += (await engine.append("s", [("message", b"\x01")], writer="w", seq=n)).ids
            assert time.monotonic() < deadline, "the switchover did not happen"
            await asyncio.sleep(0.05)
        assert pair.role(old) == "slave"  # alive, demoted
        ids += (await engine.append("s", [("message", b"\x02")], writer="w", seq=n + 1)).ids
        await until(lambda: seen.events.get("s") == ids)
    finally:
        await engine.close()
    await asyncio.to_thread(pair.wait_in_sync)


async def test_sentinel_failover_loses_and_duplicates_nothing(sentinel_pair: SentinelPair) -> None:
    pair = sentinel_pair
    pair.wait_in_sync()
    old = pair.current_primary()
    victim = pair.server(old)

    def promoted() -> None:
        deadline = time.monotonic() + 30
        while pair.current_primary() in (None, old):
            assert time.monotonic() < deadline, "sentinel did not promote the replica"
            time.sleep(0.05)

    prefix = f"t{uuid.uuid4().hex[:8]}"
    names = [f"sentinel-{n}" for n in range(4)]
    await run_failover(pair.url, prefix, names, victim.kill, promoted)


def test_every_script_publishes_through_the_prelude() -> None:
    """A script that PUBLISHes by name would be missed by a feed that SSUBSCRIBEs (Redis >= 7)."""
    scripts = sorted(Path(__file__).resolve().parent.parent.glob("broker/engine/*.lua"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert "'PUBLISH'" not in text and '"PUBLISH"' not in text, script.name


def test_compose_files_run_redis_as_documented() -> None:
    """compose.yaml sets stream-node-max-bytes; compose.cluster.yaml forms a 3+3 cluster that
    both brokers reach with a URL connect() understands (no docker needed to check this)."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    single = yaml.safe_load((root / "compose.yaml").read_text())
    assert "--stream-node-max-bytes" in single["services"]["redis"]["command"]
    compose = yaml.safe_load((root / "compose.cluster.yaml").read_text())
    services = compose["services"]
    nodes = {
        name: service["networks"]["cluster"]["ipv4_address"]
        for name, service in services.items()
        if name.removeprefix("redis-c").isdigit()
    }
    assert len(nodes) == 6
    for name in nodes:
        command = services[name]["command"]
        assert "--cluster-enabled" in command and "--stream-node-max-bytes" in command
    init = " ".join(services["redis-cluster-init"]["command"])
    assert all(f"{address}:6379" in init for address in nodes.values())
    assert "--cluster-replicas 1" in init
    for broker in ("broker-1", "broker-2"):
        url = services[broker]["environment"]["UNBROKEN_REDIS_URL"]
        client = connect(url)
        assert isinstance(client, ObservedRedisCluster)
        seeds = {n.host for n in client.nodes_manager.startup_nodes.values()}
        assert seeds <= set(nodes.values())
        assert services[broker]["depends_on"]["redis-cluster-init"]["condition"] == (
            "service_completed_successfully"
        )
