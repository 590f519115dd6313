"""The chaos run: a Redis (AOF, fsync always) and two Redis-engine brokers, each behind a
ChaosProxy; rounds of channels written by idempotent writers and read on all four transports,
while faults are injected until the budget is spent."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.broker_process import BrokerProcess
from tests.chaos.proxy import ChaosProxy
from tests.chaos.readers import PATHS, Reader, Tally, write_channel
from tests.redis_server import free_port

SECRET = "chaos:secret-for-the-chaos-suite"
TRANSPORTS = tuple(PATHS)


class RedisProcess:
    """A redis-server that can be killed with SIGKILL and started again on the same port and
    data. `appendfsync always`: an acknowledged write is on disk before the answer."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("the chaos suite needs redis-server on PATH")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="unbroken-chaos-redis-")
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", self.dir,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                answer = await reader.readline()
                writer.close()
                if answer.startswith(b"+PONG"):  # -LOADING until the AOF is read back
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Report:
    faults: Counter[str] = field(default_factory=Counter)
    tallies: dict[str, Tally] = field(default_factory=lambda: {t: Tally() for t in TRANSPORTS})
    channels: int = 0
    write_retries: int = 0
    unexpected: list[str] = field(default_factory=list)
    unexpected_timeline: list[str] = field(default_factory=list)  # process faults, for losses
    seconds: float = 0.0

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def totals(self) -> tuple[int, int, int]:
        return (
            sum(t.lost for t in self.tallies.values()),
            sum(t.duplicated for t in self.tallies.values()),
            sum(t.reordered for t in self.tallies.values()),
        )

    def clean(self) -> bool:
        unfinished = sum(t.unfinished for t in self.tallies.values())
        return self.totals() == (0, 0, 0) and not unfinished and not self.all_unexpected()

    def all_unexpected(self) -> list[str]:
        return self.unexpected + [u for t in self.tallies.values() for u in t.unexpected]

    def text(self) -> str:
        lines = [
            f"chaos: {self.total_faults} faults in {self.seconds:.0f} s over {self.channels} "
            f"channels ({', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))})",
            f"{'transport':<10}{'readers':>8}{'messages':>10}{'lost':>6}{'dup':>6}{'reord':>7}"
            f"{'reconn':>8}{'unfinished':>12}",
        ]
        for name, t in self.tallies.items():
            lines.append(
                f"{name:<10}{t.readers:>8}{t.received:>10}{t.lost:>6}{t.duplicated:>6}"
                f"{t.reordered:>7}{t.reconnects:>8}{t.unfinished:>12}"
            )
        lost, dup, reordered = self.totals()
        lines.append(
            f"total: lost {lost}, duplicated {dup}, reordered {reordered}; "
            f"writer retries {self.write_retries}"
        )
        lines.extend(f"unexpected: {u}" for u in self.all_unexpected()[:40])
        if self.all_unexpected():
            lines.extend(f"process fault: {u}" for u in self.unexpected_timeline)
        return "\n".join(lines)


@dataclass
class Plan:
    faults: int = 200  # stop injecting once this many faults were injected
    seed: int = 1
    channels_per_round: int = 3
    messages: int = 30
    pad: int = 2000  # bytes of padding per message, so a paused reader overflows its buffer
    write_interval: float = 0.02
    network_every: float = 0.2  # seconds between two network faults
    broker_kill_every: float = 8.0
    redis_restart_every: float = 25.0
    round_timeout: float = 60.0


class Chaos:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.report = Report()
        self.redis = RedisProcess()
        self.brokers: list[BrokerProcess] = []
        self.proxies: list[ChaosProxy] = []
        self.readers: list[Reader] = []
        self.done = asyncio.Event()

    async def run(self) -> Report:
        started = time.monotonic()
        try:
            await self._start()
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False)
            ) as session:
                injectors = [
                    asyncio.create_task(self._network_faults()),
                    asyncio.create_task(self._process_faults()),
                ]
                try:
                    while not self.done.is_set():
                        await self._round(session)
                    await self._round(session)  # one more, with no fault: all must be well
                finally:
                    for task in injectors:
                        task.cancel()
                    await asyncio.gather(*injectors, return_exceptions=True)
        finally:
            await self._stop()
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _start(self) -> None:
        await self.redis.start()
        prefix = f"chaos-{uuid.uuid4().hex[:8]}"
        env = {
            "UNBROKEN_MAX_PENDING_BYTES": "65536",
            "UNBROKEN_OPEN_RATE": "100000",
            "UNBROKEN_OPEN_BURST": "100000",
            "UNBROKEN_MAX_OPEN_RATE": "0",
            "UNBROKEN_LOG_LEVEL": "warning",
        }
        for _ in range(2):
            broker = BrokerProcess(
                "--secret", SECRET, "--redis", self.redis.url, "--redis-prefix", prefix,
                "--heartbeat", "0.5",
                env=env,
            )  # fmt: skip
            await broker.start()
            self.brokers.append(broker)
            self.proxies.append(await ChaosProxy(broker.port).start())

    async def _stop(self) -> None:
        for proxy in self.proxies:
            await proxy.close()
        for broker in self.brokers:
            await broker.__aexit__(None, None, None)
        await self.redis.stop()

    @property
    def bases(self) -> list[str]:
        return [proxy.url for proxy in self.proxies]

    def _count(self, kind: str, where: str = "") -> None:
        self.report.faults[kind] += 1
        if kind in ("broker_kill9", "redis_kill9"):
            self.report.unexpected_timeline.append(f"{time.monotonic():.2f} {kind} {where}")
        if self.report.total_faults >= self.plan.faults:
            self.done.set()

    async def _open(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        for attempt in range(200):
            base = self.bases[attempt % len(self.bases)]
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ConnectionError):
                async with session.post(
                    f"{base}/v1/channels", timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status == 201:
                        return dict(await response.json())
                    if response.status not in (502, 503, 504):
                        raise RuntimeError(f"open: {response.status} {await response.text()}")
            await asyncio.sleep(0.1)
        raise RuntimeError("no broker opened a channel in 200 attempts")

    async def _round(self, session: aiohttp.ClientSession) -> None:
        plan = self.plan
        channels = [await self._open(session) for _ in range(plan.channels_per_round)]
        readers = [
            Reader(transport, channel, self.bases, plan.messages)
            for channel in channels
            for transport in TRANSPORTS
        ]
        self.readers = readers
        unexpected: list[str] = []
        tasks = [asyncio.create_task(reader.run(session, self.rng)) for reader in readers]
        writers = [
            asyncio.create_task(self._write(session, channel, unexpected)) for channel in channels
        ]
        done, pending = await asyncio.wait([*tasks, *writers], timeout=plan.round_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in writers:
            if task in done and task.exception() is None:
                self.report.write_retries += task.result()
        for task in done:
            if task.exception() is not None:
                unexpected.append(f"task failed: {task.exception()!r}")
        if pending:
            unexpected.append(f"{len(pending)} readers/writers still running after the round")
        for reader in readers:
            self.report.tallies[reader.transport].add(reader)
        self.report.unexpected.extend(unexpected)
        self.report.channels += len(channels)

    async def _write(
        self, session: aiohttp.ClientSession, channel: dict[str, Any], unexpected: list[str]
    ) -> int:
        plan = self.plan
        return await write_channel(
            session,
            self.bases,
            channel,
            plan.messages,
            plan.pad,
            plan.write_interval,
            self.rng,
            unexpected,
        )

    async def _network_faults(self) -> None:
        kinds = ["cut", "half_open", "truncate", "delay", "slow_reader"]
        weights = [4, 2, 2, 2, 2]
        while not self.done.is_set():
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.plan.network_every)
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "slow_reader":
                live = [r for r in self.readers if not r.ended and not r.pause]
                if live:
                    self.rng.choice(live).pause = self.rng.uniform(1.0, 2.5)
                    self._count(kind)
                continue
            link = self.rng.choice(self.proxies).pick(self.rng)
            if link is None:
                continue
            if kind == "cut":
                link.cut()
            elif kind == "half_open":
                link.half_open()
            elif kind == "truncate":
                link.truncate_next()
            else:
                link.slow_down(self.rng.uniform(0.05, 0.4))
            self._count(kind)

    async def _process_faults(self) -> None:
        next_kill = time.monotonic() + self.plan.broker_kill_every / 2
        next_redis = time.monotonic() + self.plan.redis_restart_every / 2
        while not self.done.is_set():
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if now >= next_kill:
                broker = self.rng.choice(self.brokers)
                assert broker.process is not None
                broker.process.send_signal(signal.SIGKILL)  # kill -9: no goodbye to anyone
                await broker.process.wait()
                self._count("broker_kill9", self.proxies[self.brokers.index(broker)].url)
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                await broker.start()
                next_kill = time.monotonic() + self.plan.broker_kill_every
            elif now >= next_redis:
                await self.redis.kill()
                self._count("redis_kill9")
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                await self.redis.start()
                next_redis = time.monotonic() + self.plan.redis_restart_every


async def run_chaos(plan: Plan) -> Report:
    return await Chaos(plan).run()
