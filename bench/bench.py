"""Unbroken benchmark: fan-out throughput and write→receive latency, per engine.

    python bench/bench.py                     # both engines (redis if redis-server is installed)
    python bench/bench.py --engine memory --subscribers 1000 --messages 200

The broker runs in its own process (uvloop, as `python -m broker serve`); readers are raw asyncio
protocols that only count SSE events, so the figures measure the broker, not a client library.
Writes go through the HTTP write API, the path every backend can use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import free_port, private_redis  # noqa: E402


class SSECounter(asyncio.Protocol):
    """Counts `event: message` frames on one SSE connection; records arrival of marked ones."""

    def __init__(self, request: bytes, on_event: Any = None) -> None:
        self.request = request
        self.count = 0
        self.connected = asyncio.get_running_loop().create_future()
        self.on_event = on_event
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]
        self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        chunk = self._tail + data
        self.count += chunk.count(b"event: message\n")
        if self.on_event is not None:
            for line in chunk.split(b"\n")[:-1]:
                if line.startswith(b'data: {"t":'):
                    self.on_event(json.loads(line[6:])["t"])
        self._tail = chunk[-20:] if self.on_event is None else chunk[chunk.rfind(b"\n") + 1 :]


def sse_request(port: int, opened: dict[str, Any]) -> bytes:
    path = f"/v1/channels/{opened['id']}/events?token={opened['read_token']}"
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
    return (head + "\r\n").encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


BROKER_PID: list[int] = []


@contextlib.contextmanager
def broker_process(engine: str, redis_url: str | None) -> Iterator[int]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "broker",
        "serve",
        "--port",
        str(port),
        "--engine",
        engine,
        "--secret",
        "bench:bench-secret",
        "--log-level",
        "warning",
        "--max-messages",
        "100000",
    ]
    if redis_url:
        command += ["--redis", redis_url, "--redis-prefix", f"bench-{os.getpid()}"]
    env = dict(
        os.environ,
        UNBROKEN_OPEN_RATE="100000",
        UNBROKEN_OPEN_BURST="100000",
        UNBROKEN_MAX_OPEN_RATE="0",  # no broker-wide cap either: the figures are about speed
        UNBROKEN_MAX_PENDING_BYTES=str(64 * 1024 * 1024),
    )
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    BROKER_PID[:] = [process.pid]
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


async def wait_healthy(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(100):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("the broker did not become healthy; run it by hand to see why")


async def open_channel(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.post(f"{base}/v1/channels") as response:
        return dict(await response.json())


async def write(
    session: aiohttp.ClientSession, opened: dict[str, Any], body: dict[str, Any]
) -> None:
    token = opened["channel_token"]["token"]
    async with session.post(
        opened["urls"]["messages"], json=body, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"write failed: {response.status} {await response.text()}")


async def fanout(port: int, subscribers: int, messages: int, batch: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, base)
        opened = await open_channel(session, base)
        request = sse_request(port, opened)
        await asyncio.sleep(0.5)
        rss_before = rss_bytes(BROKER_PID[0])
        readers = []
        for n in range(subscribers):
            _, reader = await loop.create_connection(lambda: SSECounter(request), "127.0.0.1", port)
            readers.append(reader)
            if n % 200 == 199:
                print(f"  connected {n + 1}/{subscribers} subscribers", file=sys.stderr)
        await asyncio.sleep(1.0)  # let every request reach the broker and subscribe
        rss_per_subscriber = (rss_bytes(BROKER_PID[0]) - rss_before) / subscribers
        expected = subscribers * messages
        cpu_before = cpu_seconds(BROKER_PID[0])
        started = time.perf_counter()
        for offset in range(0, messages, batch):
            await write(
                session,
                opened,
                {"messages": [{"n": n} for n in range(offset, min(messages, offset + batch))]},
            )
        while sum(r.count for r in readers) < expected:
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"only {sum(r.count for r in readers)}/{expected} delivered")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        broker_cpu = cpu_seconds(BROKER_PID[0]) - cpu_before
    return {
        "subscribers": subscribers,
        "messages": messages,
        "deliveries": expected,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(expected / elapsed),
        # Client and broker share this machine's cores; this one is the broker's own cost.
        "broker_cpu_s": round(broker_cpu, 3),
        "deliveries_per_broker_cpu_s": round(expected / broker_cpu) if broker_cpu else None,
        "broker_rss_kib_per_idle_subscriber": round(rss_per_subscriber / 1024, 1),
    }


async def latency(port: int, channels: int, rounds: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    samples: list[float] = []

    def record(sent: float) -> None:
        samples.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_healthy(session, base)
        opened = [await open_channel(session, base) for _ in range(channels)]
        for entry in opened:
            await loop.create_connection(
                lambda e=entry: SSECounter(sse_request(port, e), record), "127.0.0.1", port
            )
        await asyncio.sleep(1.0)
        for round_number in range(rounds):
            # Writes are spread over time (not a burst) so the figure is latency, not queueing.
            for entry in opened:
                await write(session, entry, {"data": {"t": time.perf_counter()}})
            print(f"  latency round {round_number + 1}/{rounds}", file=sys.stderr)
        deadline = time.perf_counter() + 30
        while len(samples) < channels * rounds and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
    samples.sort()
    return {
        "channels": channels,
        "samples": len(samples),
        "p50_ms": round(statistics.median(samples) * 1000, 2),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 2),
    }


def run(coroutine: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["memory", "redis", "both"], default="both")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="messages per write request")
    parser.add_argument("--channels", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    engines = ["memory", "redis"] if args.engine == "both" else [args.engine]
    results = {}
    for engine in engines:
        with contextlib.ExitStack() as stack:
            redis_url = stack.enter_context(private_redis()) if engine == "redis" else None
            if engine == "redis" and redis_url is None:
                print("skipping redis: no redis-server installed", file=sys.stderr)
                continue
            print(f"[{engine}] fan-out to {args.subscribers} SSE subscribers", file=sys.stderr)
            with broker_process(engine, redis_url) as port:
                fan = run(fanout(port, args.subscribers, args.messages, args.batch))
            print(f"[{engine}] latency over {args.channels} channels", file=sys.stderr)
            with broker_process(engine, redis_url) as port:
                lat = run(latency(port, args.channels, args.rounds))
            results[engine] = {"fanout": fan, "latency": lat}
            print(json.dumps({engine: results[engine]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
