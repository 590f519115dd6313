"""What write coalescing saves Redis: LLM-like streams written straight into Redis by the worker
library, with coalescing off (every token one awaited write, one Lua call) and on (tokens
queued with write_nowait, one Lua call per 20 ms window).

    python bench/worker_coalescing.py                       # 200,500,1000 streams x 50 tok/s
    python bench/worker_coalescing.py --streams 100 --seconds 3   # a quick look

Per rung it prints the tokens/s reached, the Lua calls (appends) per 1,000 tokens, Redis CPU
per 1,000 tokens (user + system from INFO cpu), and the p99 of the time from a token being
produced to its write being acknowledged. A rung "holds" when the rate is reached and p99 stays
under 50 ms. Uses a private redis-server on a free port; never a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis

from broker.engine.base import Limits
from broker.engine.redis_layout import create_channel
from broker.tokens import KeyRing
from tests.redis_server import private_redis
from worker import Channel, Pool

SECRET = "bench:worker-coalescing"
PREFIX = "bench"


async def redis_stats(client: Redis) -> tuple[float, int]:
    cpu = await client.info("cpu")
    calls = await client.info("commandstats")
    appends = sum(
        int(calls.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval")
    )
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), appends


async def stream(
    channel: Channel, rate: float, seconds: float, queued: bool, latencies: list[float]
) -> int:
    """One LLM-like producer: a token every 1/rate s (on a schedule, not after each ack)."""
    loop = asyncio.get_running_loop()
    interval = 1 / rate
    start = loop.time() + interval * (hash(channel.id) % 1000) / 1000  # spread the phases
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    while (now := loop.time()) < start + seconds:
        due = start + sent * interval
        if due > now:
            await asyncio.sleep(due - now)
        produced = loop.time()

        def done(_: Any, produced: float = produced) -> None:
            latencies.append(loop.time() - produced)

        if queued:
            future = channel.write_nowait({"t": sent})
            future.add_done_callback(done)
            pending.append(future)
        else:
            await channel.write({"t": sent})
            done(None)
        sent += 1
    await asyncio.gather(*pending)
    return sent


async def rung(
    redis_url: str, streams: int, rate: float, seconds: float, queued: bool
) -> dict[str, float]:
    ring = KeyRing.parse(SECRET)
    client = Redis.from_url(redis_url)
    pool = Pool()
    ids = [f"b{os.getpid()}-{queued:d}-{streams}-{n}" for n in range(streams)]
    for channel_id in ids:
        await create_channel(client, PREFIX, channel_id, Limits())
    channels = [
        Channel.from_token(
            ring.sign(channel_id, "write", "http://unused", 600),
            redis_url=redis_url,
            redis_prefix=PREFIX,
            secret=SECRET,
            pool=pool,
            coalesce=0.02 if queued else 0,
        )
        for channel_id in ids
    ]
    latencies: list[float] = []
    cpu0, calls0 = await redis_stats(client)
    started = time.monotonic()
    sent = await asyncio.gather(*(stream(c, rate, seconds, queued, latencies) for c in channels))
    elapsed = time.monotonic() - started
    cpu1, calls1 = await redis_stats(client)
    await pool.close()
    await client.aclose()
    tokens = sum(sent)
    latencies.sort()
    return {
        "tokens_per_s": tokens / elapsed,
        "target_per_s": streams * rate,
        "appends_per_1k": 1000 * (calls1 - calls0) / tokens,
        "redis_cpu_ms_per_1k": 1e6 * (cpu1 - cpu0) / tokens,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "p50_ms": 1000 * statistics.median(latencies),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="200,500,1000", help="comma-separated rungs")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens/s per stream")
    parser.add_argument("--seconds", type=float, default=5.0, help="per rung and mode")
    args = parser.parse_args()
    with private_redis() as redis_url:
        assert redis_url is not None, "needs redis-server"
        print(
            f"{'streams':>7} {'mode':>8} {'tok/s':>8} {'target':>7} {'appends/1k':>10} "
            f"{'redis ms/1k':>11} {'p50 ms':>7} {'p99 ms':>7} holds"
        )
        for streams in (int(s) for s in args.streams.split(",")):
            for queued in (False, True):
                r = await rung(redis_url, streams, args.rate, args.seconds, queued)
                holds = r["tokens_per_s"] >= 0.95 * r["target_per_s"] and r["p99_ms"] < 50
                print(
                    f"{streams:>7} {'coalesce' if queued else 'off':>8} "
                    f"{r['tokens_per_s']:>8.0f} {r['target_per_s']:>7.0f} "
                    f"{r['appends_per_1k']:>10.0f} {r['redis_cpu_ms_per_1k']:>11.1f} "
                    f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {'yes' if holds else 'no'}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
