"""A private redis-server for tests: started on a free port, stopped afterwards.

Tests never touch a Redis they did not start (or, when none can be started, a database on an
existing server reachable through UNBROKEN_TEST_REDIS_URL, under a unique key prefix).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.tools import missing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, workdir: str, *args: str) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:`port` with its files in `workdir` (no RDB snapshots), and
    `args` appended; returns once it answers PING. Raises RuntimeError when it does not start."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen(
        [*command, "--dir", workdir, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            process.wait(timeout=10)
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.05)


@contextmanager
def private_redis() -> Iterator[str | None]:
    """Yield a redis:// URL of a fresh server, or None when none can be had."""
    if shutil.which("redis-server") is None:
        yield os.environ.get("UNBROKEN_TEST_REDIS_URL")
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="unbroken-redis-")
    try:
        process = start_redis(port, workdir, "--appendonly", "no")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class RestartableRedis:
    """A private redis-server on a fixed port and data dir that a test can stop, kill, freeze
    and start again with its data: AOF with `appendfsync always`, so an acknowledged write
    survives a restart (even after kill -9). Skips the test (fails it under CI) without
    redis-server."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            missing("redis-server (apt-get install redis-server), to stop and restart it")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="unbroken-redis-restart-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = ("--appendonly", "yes", "--appendfsync", "always")
        self.process = start_redis(self.port, self.dir, *aof)

    def stop(self) -> None:
        """SIGTERM: Redis closes its AOF and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """kill -9: no goodbye to clients (the AOF is fsynced at every write anyway)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def signal(self, signum: int) -> None:
        """SIGSTOP freezes it (clients time out, nothing is refused), SIGCONT thaws it."""
        assert self.process is not None
        self.process.send_signal(signum)

    def cleanup(self) -> None:
        self.kill()  # SIGKILL ends a frozen (SIGSTOPped) server too
        shutil.rmtree(self.dir, ignore_errors=True)
