"""A real broker in a subprocess (`python3 -m broker serve`), for tests that need signals, the
CLI's settings and real process exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import aiohttp

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


class BrokerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self._log = tempfile.NamedTemporaryFile(prefix="broker-", suffix=".log", delete=False)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 15.0) -> BrokerProcess:
        self.process = await asyncio.create_subprocess_exec(
            *self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise RuntimeError(f"broker exited at start:\n{self.output()}")
                try:
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"broker not healthy within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        """The exit code; raises TimeoutError when the process outlives `timeout`."""
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"broker still running after {timeout}s:\n{self.output()}") from None

    async def __aenter__(self) -> BrokerProcess:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._log.close()
        os.unlink(self._log.name)
