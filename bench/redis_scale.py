"""Redis engine throughput and latency: 1 shard vs a 3-shard Cluster, and the cost of durable
writes. Private redis-server processes on free ports; nothing else is touched.

    python bench/redis_scale.py                 # both comparisons
    python bench/redis_scale.py --only scale    # 1 shard (one server) vs 3 (a Cluster)
    python bench/redis_scale.py --only durable  # plain vs --durable-writes (WAIT 1 / WAITAOF)

One process runs a RedisEngine (its live feed watches every channel, as a broker's does) and
`--writers` concurrent writers appending one message at a time to `--channels` channels for
`--seconds`. Reported: appends per second, and the write->delivery latency (from the append
call until the live feed handed the event over) at p50 and p99. The load generator is one
Python process: on a small machine it, not Redis, is often the limit (the figures say so when
the shards stay idle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.engine.base import Limits  # noqa: E402
from broker.engine.redis import RedisEngine  # noqa: E402
from tests.redis_cluster import (  # noqa: E402
    _info,
    _start,
    _wait,
    form_cluster,
    free_port,
    start_cluster_nodes,
)


@contextlib.contextmanager
def one_server(*args: str) -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-bench-"))
    server = _start(workdir, free_port(), *args)
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.kill()


@contextlib.contextmanager
def primary_with_replica(*args: str) -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-bench-"))
    primary = _start(workdir, free_port(), *args)
    replica = _start(workdir, free_port(), "--replicaof", "127.0.0.1", str(primary.port), *args)
    try:
        _wait(
            lambda: _info(replica.port, "replication").get("master_link_status") == "up",
            "the replica in sync",
        )
        yield f"redis://127.0.0.1:{primary.port}/0"
    finally:
        replica.kill()
        primary.kill()


@contextlib.contextmanager
def three_shards() -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-bench-"))
    servers = start_cluster_nodes(workdir, 3)
    try:
        form_cluster(servers, replicas=0)
        _wait(
            lambda: all(_info(s.port, "cluster").get("cluster_state") == "ok" for s in servers),
            "cluster state ok",
        )
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in servers) + "/"
    finally:
        for server in servers:
            server.kill()


async def run(
    url: str, *, channels: int, writers: int, seconds: float, durable: int | None
) -> dict[str, float]:
    latencies: list[float] = []
    acks: list[float] = []  # append call -> answer
    delivered = 0

    def deliver(channel_id: str, events: Any) -> None:
        nonlocal delivered
        if events is None:
            return
        now = time.perf_counter()
        for event in events:
            delivered += 1
            latencies.append(now - msgpack.unpackb(event.payload))

    prefix = f"bench{random.randrange(1 << 30)}"
    engine = RedisEngine(
        Limits(idle_ttl=120, retention=60, max_messages=1000),
        url,
        prefix=prefix,
        durable_replicas=durable,
        max_connections=writers + 4,
    )
    await engine.start(deliver)
    mode = " ".join(map(str, engine.durability.command[:3])) if engine.durability else "none"
    try:
        names = [f"c{n}" for n in range(channels)]
        await asyncio.gather(*(engine.create(name) for name in names))
        await asyncio.gather(*(engine.watch(name) for name in names))
        stop = time.perf_counter() + seconds
        appended = 0

        async def writer(n: int) -> None:
            nonlocal appended
            seq = 0
            while time.perf_counter() < stop:
                seq += 1
                sent = time.perf_counter()
                payload = msgpack.packb(sent)
                await engine.append(
                    names[(n + seq) % channels], [("message", payload)], writer=f"w{n}", seq=seq
                )
                acks.append(time.perf_counter() - sent)
                appended += 1

        started = time.perf_counter()
        await asyncio.gather(*(writer(n) for n in range(writers)))
        elapsed = time.perf_counter() - started
        deadline = time.perf_counter() + 10
        while delivered < appended and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        for name in names:
            await engine.delete(name)
    finally:
        await engine.close()
    latencies.sort()
    acks.sort()
    if durable is not None:
        print(f"  (durability wait: {mode})")
    return {
        "ack_p50_ms": 1000 * statistics.median(acks),
        "ack_p99_ms": 1000 * acks[int(len(acks) * 0.99) - 1],
        "msg_per_s": appended / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
        "lost": appended - delivered,
    }


def report(label: str, figures: dict[str, float]) -> None:
    print(
        f"{label:<34} {figures['msg_per_s']:>7,.0f} msg/s | delivery p50 {figures['p50_ms']:6.2f} "
        f"p99 {figures['p99_ms']:6.2f} ms | append answered p50 {figures['ack_p50_ms']:6.2f} "
        f"p99 {figures['ack_p99_ms']:6.2f} ms | undelivered {figures['lost']:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["scale", "durable"])
    parser.add_argument("--channels", type=int, default=60)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    options = {"channels": args.channels, "writers": args.writers, "seconds": args.seconds}
    print(f"{args.writers} writers, {args.channels} channels, {args.seconds:.0f} s per run")
    if args.only in (None, "scale"):
        with one_server() as url:
            report("1 shard (one redis-server)", asyncio.run(run(url, durable=None, **options)))
        with three_shards() as url:
            report("3 shards (Redis Cluster)", asyncio.run(run(url, durable=None, **options)))
    if args.only in (None, "durable"):
        aof = ("--appendonly", "yes", "--appendfsync", "everysec")
        with primary_with_replica(*aof) as url:
            report(
                "primary + replica, AOF everysec", asyncio.run(run(url, durable=None, **options))
            )
            report("  --durable-writes, 1 replica", asyncio.run(run(url, durable=1, **options)))


if __name__ == "__main__":
    main()
