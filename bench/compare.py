"""Unbroken (memory and Redis engines) and Nchan side by side, in one run, with one client.

    python bench/compare.py                    # every row of docs/benchmarks.md, 2 rounds
    python bench/compare.py --quick            # a smoke run with tiny sizes (seconds)
    python bench/compare.py --targets memory,nchan --only fanout,replay --rounds 3

Rounds are interleaved (each scenario runs on every server in turn, the order rotating per
round) so a load change on a shared machine hits all servers alike; the table gives each
figure's median over rounds and the ratio Unbroken / Nchan. Every server is started fresh for
each scenario (so memory figures are per scenario) and stopped after it; each scenario has a time
cap. Server CPU is user + system time from /proc of the server's processes: the broker (plus
redis-server for the Redis engine), or nginx's master and worker.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rawclient import HttpClient, Reader, close_all, open_readers
from bench.servers import (
    SECRET,
    Channel,
    Nchan,
    PrivateRedis,
    Server,
    Unbroken,
    cpu_seconds,
    rss_bytes,
)


@dataclass
class Plan:
    fanout: list[tuple[int, int]] = field(default_factory=lambda: [(1000, 200), (5000, 100)])
    publishers: int = 16
    publish_seconds: float = 3.0
    idle_readers: int = 10_000
    idle_channels: int = 1000
    heartbeat: float = 15.0
    idle_window: float = 30.0
    ws_readers: int = 5000
    ladder_channels: int = 2000
    ladder_rates: list[int] = field(
        default_factory=lambda: (
            [500, 1000, 2000, 3000, 5000, 8000, 10_000, 12_000, 15_000, 20_000, 25_000, 30_000]
        )
    )
    ladder_step: float = 2.0
    ladder_p99: float = 0.050
    replay: int = 10_000
    stream_counts: list[int] = field(
        default_factory=lambda: [10, 20, 40, 60, 80, 100, 120, 140, 160, 200, 240, 320]
    )
    tokens_per_stream: int = 100  # a fast model streaming 100 tokens/s
    cap: float = 240.0  # seconds per scenario and server


QUICK = Plan(
    fanout=[(50, 20), (100, 10)],
    publishers=4,
    publish_seconds=0.3,
    idle_readers=100,
    idle_channels=10,
    heartbeat=1.0,
    idle_window=1.5,
    ws_readers=50,
    ladder_channels=20,
    ladder_rates=[200, 500],
    ladder_step=0.3,
    replay=300,
    stream_counts=[5, 10],
    tokens_per_stream=20,
    cap=30.0,
)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: str = ""
    redis_only: bool = False  # measured on the Redis engine only (the worker's Redis path)


def rows(plan: Plan) -> list[Row]:
    fan = [
        Row(
            f"fanout_{subs}",
            f"fan-out {subs:,} SSE x {msgs} msgs, deliveries per server CPU-s",
            "/CPU-s",
            True,
            "≥ 1.0",
        )
        for subs, msgs in plan.fanout
    ]
    k = f"{plan.idle_readers // 1000}k" if plan.idle_readers >= 1000 else str(plan.idle_readers)
    return [
        *fan,
        Row(
            "publish_rate",
            f"HTTP publishes/s, {plan.publishers} concurrent publishers",
            "/s",
            True,
            "≥ 0.5",
        ),
        Row("publish_cpu", "server CPU per HTTP publish", "µs", False, "≤ 80 µs"),
        Row("idle_sse", "idle SSE connection (RSS)", "KiB", False, "≤ 10 KiB"),
        Row("idle_ws", "idle WS connection (RSS)", "KiB", False, "≤ 12 KiB"),
        Row(
            "idle_cpu",
            f"idle CPU, {k} readers, heartbeat {plan.heartbeat:g} s",
            "ms/s",
            False,
            "≤ 2x",
        ),
        Row(
            "ladder",
            f"{plan.ladder_channels:,} channels: highest msg/s with p99 < "
            f"{plan.ladder_p99 * 1000:g} ms (Unbroken redis: worker → Redis; others: HTTP)",
            "msg/s",
            True,
            "≥ 1.0",
        ),
        Row("open", f"open {plan.idle_readers:,} SSE connections", "s", False, "≤ 3 s"),
        Row(
            "streams_plain",
            f"streams x {plan.tokens_per_stream} tokens/s, p99 < {plan.ladder_p99 * 1000:g} ms, "
            "worker -> Redis, no coalescing (tokens/s)",
            "/s",
            True,
            redis_only=True,
        ),
        Row(
            "streams_coalesced",
            f"streams x {plan.tokens_per_stream} tokens/s, p99 < {plan.ladder_p99 * 1000:g} ms, "
            "worker -> Redis, coalescing 20 ms (tokens/s)",
            "/s",
            True,
            redis_only=True,
        ),
        Row(
            "replay",
            f"replay {plan.replay:,} stored msgs over SSE",
            "msg/s",
            True,
            "redis ≥ 200k/s",
        ),
    ]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.005)


async def open_channels(server: Server, count: int) -> list[Channel]:
    clients = [HttpClient(server.port) for _ in range(min(16, count))]
    channels: list[Channel] = []

    async def opener(client: HttpClient, n: int) -> None:
        for _ in range(n):
            channels.append(await server.open(client))

    share = [count // len(clients) + (i < count % len(clients)) for i in range(len(clients))]
    try:
        await asyncio.gather(*(opener(c, n) for c, n in zip(clients, share, strict=True)))
    finally:
        for client in clients:
            client.close()
    return channels


# --- scenarios: each returns {row key: value} -----------------------------------------------


async def fanout(server: Server, plan: Plan, subs: int, msgs: int) -> dict[str, float]:
    client = HttpClient(server.port)
    channel = (await open_channels(server, 1))[0]
    readers = await open_readers(server.port, [server.sse(channel)] * subs)
    try:
        await asyncio.sleep(0.3)
        expected = subs * msgs
        cpu = cpu_seconds(server.pids)
        started = time.perf_counter()
        for n in range(msgs):
            await server.publish(client, channel, b'{"n":%d}' % n)
        await wait_until(
            lambda: sum(r.count for r in readers) >= expected, plan.cap, "fan-out deliveries"
        )
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pids) - cpu
    finally:
        close_all(readers)
        client.close()
    say(
        f"  {server.name}: {subs}x{msgs}: {expected / elapsed:,.0f} deliveries/s, "
        f"server CPU {cpu:.2f} s"
    )
    # /proc counts CPU in clock ticks: a tiny (--quick) run may read 0.
    return {f"fanout_{subs}": expected / max(cpu, 1 / os.sysconf("SC_CLK_TCK"))}


async def publish(server: Server, plan: Plan) -> dict[str, float]:
    channels = await open_channels(server, plan.publishers)
    clients = [HttpClient(server.port) for _ in channels]
    done = 0
    body = b'{"token":"Hello, world","n":1}'

    async def publisher(client: HttpClient, channel: Channel, until: float) -> None:
        nonlocal done
        while time.perf_counter() < until:
            await server.publish(client, channel, body)
            done += 1

    try:
        await server.publish(clients[0], channels[0], body)  # connections warm
        cpu = cpu_seconds(server.pids)
        started = time.perf_counter()
        until = started + plan.publish_seconds
        await asyncio.gather(
            *(publisher(c, ch, until) for c, ch in zip(clients, channels, strict=True))
        )
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pids) - cpu
    finally:
        for client in clients:
            client.close()
    say(f"  {server.name}: {done / elapsed:,.0f} publishes/s, {cpu / done * 1e6:.0f} µs CPU each")
    return {"publish_rate": done / elapsed, "publish_cpu": cpu / done * 1e6}


async def idle_sse(server: Server, plan: Plan) -> dict[str, float]:
    channels = await open_channels(server, plan.idle_channels)
    requests = [server.sse(channels[n % len(channels)]) for n in range(plan.idle_readers)]
    await asyncio.sleep(0.5)
    rss = rss_bytes(server.memory_pids)
    cpu = cpu_seconds(server.pids)
    started = time.perf_counter()
    readers = await open_readers(server.port, requests, timeout=plan.cap)
    opened = time.perf_counter() - started
    cpu = cpu_seconds(server.pids) - cpu
    say(
        f"  {server.name}: {len(readers):,} SSE readers connected in {opened:.2f} s, "
        f"{cpu / len(readers) * 1e6:.0f} µs server CPU each"
    )
    try:
        await asyncio.sleep(1.0)
        rss = rss_bytes(server.memory_pids) - rss
        cpu = cpu_seconds(server.pids)
        started = time.perf_counter()
        await asyncio.sleep(plan.idle_window)
        cpu = (cpu_seconds(server.pids) - cpu) / (time.perf_counter() - started)
        alive = sum(1 for r in readers if r.transport and not r.transport.is_closing())
        if alive != len(readers):
            raise RuntimeError(f"only {alive}/{len(readers)} idle readers still connected")
    finally:
        close_all(readers)
    say(f"  {server.name}: idle {cpu * 1000:.1f} ms/s CPU, {rss / len(readers) / 1024:.1f} KiB")
    return {
        "open": opened,
        "idle_sse": rss / len(readers) / 1024,
        "idle_cpu": cpu * 1000,
    }


async def idle_ws(server: Server, plan: Plan) -> dict[str, float]:
    channels = await open_channels(server, max(1, plan.idle_channels // 10))
    requests = [server.ws(channels[n % len(channels)]) for n in range(plan.ws_readers)]
    await asyncio.sleep(0.5)
    rss = rss_bytes(server.memory_pids)
    readers = await open_readers(server.port, requests, upgrade=True, timeout=plan.cap)
    try:
        await asyncio.sleep(1.0)
        rss = rss_bytes(server.memory_pids) - rss
    finally:
        close_all(readers)
    say(f"  {server.name}: {rss / len(readers) / 1024:.1f} KiB per idle WS")
    return {"idle_ws": rss / len(readers) / 1024}


Writer = Callable[[int, float], Awaitable[None]]


async def http_writers(server: Server, channels: list[Channel], pool: int) -> tuple[Writer, Any]:
    clients: asyncio.Queue[HttpClient] = asyncio.Queue()
    for _ in range(pool):
        clients.put_nowait(HttpClient(server.port))

    async def write(index: int, sent: float) -> None:
        client = await clients.get()
        try:
            await server.publish(client, channels[index], b'{"t":%r}' % sent)
        finally:
            clients.put_nowait(client)

    def close() -> None:
        while not clients.empty():
            clients.get_nowait().close()

    return write, close


async def worker_writers(
    server: Unbroken, channels: list[Channel], coalesce: float = 0.0
) -> tuple[Writer, Any]:
    """Writers through worker.channel straight to Redis, sharing one connection pool as the
    streams of one backend process do. `coalesce` is the worker's window (0 = off)."""
    from worker.channel import Channel as WorkerChannel
    from worker.pool import Pool

    assert server.redis is not None
    pool = Pool()
    writers = [
        WorkerChannel.from_token(
            c.token,
            redis_url=server.redis.url,
            redis_prefix=server.prefix,
            secret=SECRET,
            coalesce=coalesce,
            pool=pool,
        )
        for c in channels
    ]

    async def write(index: int, sent: float) -> None:
        await writers[index].write({"t": sent})

    async def close() -> None:
        await pool.close()

    return write, close


async def climb(
    samples: list[float],
    write: Writer,
    steps: list[tuple[int, int]],
    plan: Plan,
    who: str,
) -> float:
    """Offer each (rate, channels) step in turn; the highest rate whose writes all arrived with
    p99 under plan.ladder_p99 (and were sent at 90% of the rate or more)."""
    best = 0.0
    for rate, channels in steps:
        samples.clear()
        sent, elapsed = await drive(write, rate, plan.ladder_step, channels)
        with_all = True
        try:
            await wait_until(lambda s=sent: len(samples) >= s, 2.0, "ladder deliveries")
        except TimeoutError:
            with_all = False
        ordered = sorted(samples)
        p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)] if ordered else float("inf")
        achieved = sent / elapsed
        ok = with_all and p99 < plan.ladder_p99 and achieved >= 0.9 * rate
        say(
            f"  {who}: {rate:,}/s offered over {channels} channels, {achieved:,.0f}/s sent, "
            f"{len(samples)}/{sent} received, p99 {p99 * 1000:.1f} ms"
            + ("" if ok else "  <- limit")
        )
        if not ok:
            break
        best = float(rate)
    return best


async def ladder(server: Server, plan: Plan) -> dict[str, float]:
    channels = await open_channels(server, plan.ladder_channels)
    samples: list[float] = []
    readers = await open_readers(
        server.port, [server.sse(c) for c in channels], on_latency=samples.append
    )
    if isinstance(server, Unbroken) and server.redis is not None:
        write, close = await worker_writers(server, channels)
    else:
        write, close = await http_writers(server, channels, 64)
    try:
        # Warm up: every writer's connection (and script cache) exists before the clock runs.
        await drive(write, 4 * len(channels), 0.25, len(channels))
        await asyncio.sleep(0.5)
        steps = [(rate, len(channels)) for rate in plan.ladder_rates]
        best = await climb(samples, write, steps, plan, server.name)
    finally:
        result = close()
        if asyncio.iscoroutine(result):
            await result
        close_all(readers)
    return {"ladder": best}


async def coalescing(server: Server, plan: Plan) -> dict[str, float]:
    """LLM-like streams (each `tokens_per_stream` writes/s, one reader each) written by the
    worker straight to Redis, without and with its write coalescing: the most tokens/s
    (streams x tokens/s) with p99 under plan.ladder_p99."""
    if not (isinstance(server, Unbroken) and server.redis is not None):
        return {}  # the worker's Redis path: the Redis engine only
    channels = await open_channels(server, max(plan.stream_counts))
    samples: list[float] = []
    readers = await open_readers(
        server.port, [server.sse(c) for c in channels], on_latency=samples.append
    )
    found: dict[str, float] = {}
    try:
        for key, window in (("streams_plain", 0.0), ("streams_coalesced", 0.02)):
            write, close = await worker_writers(server, channels, window)
            try:
                await drive(write, 4 * len(channels), 0.25, len(channels))
                await asyncio.sleep(0.5)
                steps = [(n * plan.tokens_per_stream, n) for n in plan.stream_counts]
                label = f"{server.name} coalesce {window * 1000:g} ms"
                found[key] = await climb(samples, write, steps, plan, label)
            finally:
                await close()
    finally:
        close_all(readers)
    return found


async def drive(write: Writer, rate: int, seconds: float, channels: int) -> tuple[int, float]:
    """Offer `rate` writes/s for `seconds`, round-robin over the channels, through up to 256
    writes in flight. A write's timestamp is when it was due, so any backlog in the client or
    server shows up as latency."""
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    sent = 0

    async def pump() -> None:
        while True:
            index, due = await queue.get()
            try:
                await write(index, due)
            finally:
                queue.task_done()

    pumps = [asyncio.create_task(pump()) for _ in range(256)]
    started = time.perf_counter()
    try:
        while (now := time.perf_counter()) - started < seconds:
            due = int(rate * (now - started))
            while sent < due:
                queue.put_nowait((sent % channels, now))
                sent += 1
            await asyncio.sleep(0.002)
        await queue.join()
    finally:
        for task in pumps:
            task.cancel()
    return sent, time.perf_counter() - started


async def replay(server: Server, plan: Plan) -> dict[str, float]:
    channel = (await open_channels(server, 1))[0]
    datas = [b'{"n":%d}' % n for n in range(plan.replay)]
    clients = [HttpClient(server.port) for _ in range(16)]
    try:
        if isinstance(server, Unbroken):
            for start in range(0, len(datas), 1000):  # in order, 1,000 per request
                await server.publish_many(clients[0], channel, datas[start : start + 1000])
        else:
            for start in range(0, len(datas), 16):  # in order, 16 in flight
                batch = datas[start : start + 16]
                await asyncio.gather(
                    *(server.publish(c, channel, d) for c, d in zip(clients, batch, strict=False))
                )
    finally:
        for client in clients:
            client.close()
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        readers: list[Reader] = await open_readers(server.port, [server.sse(channel, True)])
        reader = readers[0]
        try:
            await wait_until(lambda r=reader: r.count >= plan.replay, plan.cap, "replay")
        finally:
            close_all(readers)
        rates.append(plan.replay / (time.perf_counter() - started))
    say(f"  {server.name}: replay {max(rates):,.0f} msg/s (best of 3)")
    return {"replay": max(rates)}


Scenario = Callable[[Server, Plan], Awaitable[dict[str, float]]]


def scenarios(plan: Plan) -> list[tuple[str, str, Scenario]]:
    found: list[tuple[str, str, Scenario]] = []
    for subs, msgs in plan.fanout:

        async def run(server: Server, plan: Plan, s: int = subs, m: int = msgs) -> dict[str, float]:
            return await fanout(server, plan, s, m)

        found.append(("fanout", f"fan-out {subs}x{msgs}", run))
    found += [
        ("publish", "HTTP publishes", publish),
        ("idle", f"{plan.idle_readers} idle SSE readers", idle_sse),
        ("ws", f"{plan.ws_readers} idle WS readers", idle_ws),
        ("ladder", f"{plan.ladder_channels} channels latency ladder", ladder),
        ("replay", f"replay {plan.replay}", replay),
        ("coalesce", "LLM streams, worker coalescing off and on", coalescing),
    ]
    return found


def slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title).strip("-")


def start_py_spy(folder: str, name: str, server: Unbroken) -> subprocess.Popen[bytes]:
    """Sample the broker during one scenario: collapsed stacks into FOLDER/NAME.txt."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    assert server.process is not None
    command = ["py-spy", "record", "--pid", str(server.process.pid), "--rate", "200"]
    command += ["--format", "raw", "-o", f"{folder}/{name}.txt"]
    # PY_SPY_NATIVE=1: C frames too (uvloop, the kernel calls); py-spy then pauses the process.
    command.append("--native" if os.environ.get("PY_SPY_NATIVE") else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_all(
    servers: list[Server], plan: Plan, rounds: int, only: set[str] | None, profile: str | None
) -> Any:
    results: dict[str, dict[str, list[float]]] = {}
    failures: list[str] = []
    chosen = [s for s in scenarios(plan) if only is None or s[0] in only]
    for number in range(rounds):
        order = servers[number % len(servers) :] + servers[: number % len(servers)]
        for key, title, scenario in chosen:
            for server in order:
                say(f"round {number + 1}/{rounds}: {title} on {server.name}")
                spy = None
                try:
                    server.start(plan.heartbeat)
                    if profile and isinstance(server, Unbroken):
                        name = f"{slug(title)}-{server.name}-{number + 1}"
                        spy = start_py_spy(profile, name, server)
                    async with asyncio.timeout(plan.cap):
                        found = await scenario(server, plan)
                except Exception as exc:  # one failure must not end the run
                    failures.append(f"{title} on {server.name}: {type(exc).__name__}: {exc}")
                    say(f"  FAILED: {failures[-1]}")
                    found = {}
                finally:
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(timeout=30)
                    server.stop()
                gc.collect()
                for key, value in found.items():
                    results.setdefault(key, {}).setdefault(server.name, []).append(value)
    return results, failures


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("KiB", "ms/s"):
        return f"{value:.1f} {unit}"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "µs":
        return f"{value:.0f} µs"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}"


def table(plan: Plan, results: dict[str, dict[str, list[float]]], names: list[str]) -> str:
    unbroken = [n for n in names if n != "nchan"]
    head = ["measure", *[f"Unbroken {n}" for n in unbroken]]
    if "nchan" in names:
        head += ["Nchan", *[f"{n} / Nchan" for n in unbroken]]
    head.append("target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(plan):
        figures = {
            name: statistics.median(values)
            for name, values in results.get(row.key, {}).items()
            if values
        }
        cells = [row.label, *[fmt(figures.get(n), row.unit) for n in unbroken]]
        if "nchan" in names:
            cells.append(fmt(figures.get("nchan"), row.unit))
            for name in unbroken:
                mine, theirs = figures.get(name), figures.get("nchan")
                cells.append(f"{mine / theirs:.2f}" if mine is not None and theirs else "-")
        cells.append(row.target + (" (higher is better)" if row.higher_is_better else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="memory,redis,nchan", help="comma-separated")
    parser.add_argument("--only", help="scenarios: fanout,publish,idle,ws,ladder,replay,coalesce")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (2; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--py-spy", metavar="DIR", help="profile Unbroken per scenario into DIR")
    parser.add_argument("--json", help="also write every figure of every round to this file")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    rounds = args.rounds or (1 if args.quick else 2)
    only = set(args.only.split(",")) if args.only else None
    # 10k readers plus the server's own sockets; children inherit the limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.set_threshold(100_000, 50, 100)  # the client's own GC pauses would read as latency
    # Stopped from outside: still stop every server this run started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    redis = PrivateRedis() if "redis" in names else None
    servers: list[Server] = []
    for name in names:
        if name == "nchan":
            servers.append(Nchan())
        elif name in ("memory", "redis"):
            servers.append(Unbroken(name, redis if name == "redis" else None))
        else:
            parser.error(f"unknown target {name!r}")
    try:
        try:
            import uvloop

            results, failures = uvloop.run(run_all(servers, plan, rounds, only, args.py_spy))
        except ImportError:
            results, failures = asyncio.run(run_all(servers, plan, rounds, only, args.py_spy))
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()
    print(table(plan, results, names))
    print(f"\n{rounds} interleaved round(s); medians; ratio = Unbroken / Nchan.")
    for failure in failures:
        print(f"FAILED: {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
