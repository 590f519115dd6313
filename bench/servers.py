"""The servers the side-by-side benchmark starts: Unbroken (memory or Redis engine) and Nchan.

Each server says which processes are its own (for CPU and memory read from /proc), how a reader
subscribes, and how a message is published, so every scenario runs the same client code against
all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rawclient import HttpClient, sse_request, ws_request

ROOT = Path(__file__).resolve().parent.parent


def _nchan_anchor() -> Path:
    """`shared/anchors/nchan` beside the repository (or beside the folder of worktrees)."""
    if "NCHAN_ANCHOR" in os.environ:
        return Path(os.environ["NCHAN_ANCHOR"])
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared/anchors/nchan/nginx.conf.in").exists():
            return base / "shared/anchors/nchan"
    return ROOT.parent / "shared/anchors/nchan"


NCHAN_ANCHOR = _nchan_anchor()
SECRET = "bench:bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.05)


def proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            fields = proc_stat(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(proc_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


class PrivateRedis:
    """A redis-server on a free port for this run only (never the machine's 6379)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="unbroken-bench-redis-")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--maxclients",
                "20000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.process)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Channel:
    id: str
    read: str = ""  # Unbroken read token
    write: str = ""  # Unbroken write token
    token: Any = None  # Unbroken channel token object (for the worker)


class Server:
    name: str
    port: int
    pids: list[int]  # whose CPU counts
    memory_pids: list[int]  # whose RSS counts (connections live there)

    def start(self, heartbeat: float) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    async def open(self, client: HttpClient) -> Channel:
        raise NotImplementedError

    def sse(self, channel: Channel, replay: bool = False) -> bytes:
        raise NotImplementedError

    def ws(self, channel: Channel) -> bytes:
        raise NotImplementedError

    async def publish(self, client: HttpClient, channel: Channel, data: bytes) -> None:
        raise NotImplementedError

    async def publish_many(self, client: HttpClient, channel: Channel, datas: list[bytes]) -> None:
        for data in datas:
            await self.publish(client, channel, data)


class Unbroken(Server):
    def __init__(self, engine: str, redis: PrivateRedis | None = None) -> None:
        self.name = engine
        self.engine = engine
        self.redis = redis
        self.prefix = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, heartbeat: float) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "broker", "serve", "--port", str(self.port)]
        command += ["--engine", self.engine, "--secret", SECRET, "--log-level", "warning"]
        command += ["--max-messages", "100000", "--heartbeat", str(heartbeat)]
        if self.redis is not None:
            self.prefix = f"bench-{uuid.uuid4().hex[:8]}"
            command += ["--redis", self.redis.url, "--redis-prefix", self.prefix]
        env = dict(
            os.environ,
            UNBROKEN_OPEN_RATE="1000000",
            UNBROKEN_OPEN_BURST="1000000",
            UNBROKEN_MAX_OPEN_RATE="1000000",
            UNBROKEN_MAX_PENDING_BYTES=str(64 * 1024 * 1024),
            UNBROKEN_WRITER_TIMEOUT="0",  # channels left idle on purpose must not time out
            PYTHONPATH=str(ROOT),
        )
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)
        wait_port(self.port, self.process)
        self.memory_pids = [self.process.pid]
        self.pids = self.memory_pids + ([self.redis.process.pid] if self.redis else [])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    async def open(self, client: HttpClient) -> Channel:
        opened: Any = await client.json("POST", "/v1/channels")
        return Channel(
            opened["id"],
            read=opened["read_token"],
            write=opened["channel_token"]["token"],
            token=opened["channel_token"],
        )

    def sse(self, channel: Channel, replay: bool = False) -> bytes:
        return sse_request(f"/v1/channels/{channel.id}/events?token={channel.read}", self.port)

    def ws(self, channel: Channel) -> bytes:
        return ws_request(f"/v1/channels/{channel.id}/ws?token={channel.read}", self.port)

    async def publish(self, client: HttpClient, channel: Channel, data: bytes) -> None:
        await self.publish_many(client, channel, [data])

    async def publish_many(self, client: HttpClient, channel: Channel, datas: list[bytes]) -> None:
        if len(datas) == 1:
            body = b'{"data":' + datas[0] + b"}"
        else:
            body = b'{"messages":[' + b",".join(datas) + b"]}"
        headers = {"Authorization": f"Bearer {channel.write}", "Content-Type": "application/json"}
        status, answer = await client.request(
            "POST", f"/v1/channels/{channel.id}/messages", body, headers
        )
        if status != 201:
            raise RuntimeError(f"publish failed: {status} {answer[:200]!r}")


class Nchan(Server):
    """nginx + libnginx-mod-nchan from the project's anchor (../shared/anchors/nchan), one worker,
    with the anchor's own nginx.conf plus the heartbeat interval of the scenario."""

    name = "nchan"

    def __init__(self) -> None:
        self.dir: str | None = None
        self.pids: list[int] = []
        template = NCHAN_ANCHOR / "nginx.conf.in"
        if not template.exists():
            raise RuntimeError(f"no Nchan anchor at {NCHAN_ANCHOR} (set NCHAN_ANCHOR)")
        if not Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists():
            # The anchor's start script installs nginx-light + libnginx-mod-nchan with apt.
            port = free_port()
            folder = subprocess.run(
                ["sh", str(NCHAN_ANCHOR / "start.sh"), str(port), "1"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            os.kill(int(Path(folder, "nginx.pid").read_text()), signal.SIGTERM)
        self.template = template.read_text()

    def start(self, heartbeat: float) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="unbroken-bench-nchan-")
        seconds = max(1, round(heartbeat))  # Nchan takes whole seconds
        ping = f"nchan_eventsource_ping_interval {seconds};"
        ping += f" nchan_websocket_ping_interval {seconds};"
        conf = (
            self.template.replace("@DIR@", self.dir)
            .replace("@PORT@", str(self.port))
            .replace("@WORKERS@", "1")
            .replace("  server {", "  server {\n    " + ping, 1)
        )
        Path(self.dir, "nginx.conf").write_text(conf)
        subprocess.run(["nginx", "-c", f"{self.dir}/nginx.conf"], check=True)
        wait_port(self.port, None)
        master = int(Path(self.dir, "nginx.pid").read_text())
        deadline = time.monotonic() + 10
        while not (workers := children(master)):  # the worker may fork after the listen
            if time.monotonic() > deadline:
                raise RuntimeError("nginx started no worker process")
            time.sleep(0.02)
        self.pids = [master, *workers]
        self.memory_pids = self.pids

    def stop(self) -> None:
        if self.dir is None:
            return
        pid_file = Path(self.dir, "nginx.pid")
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in self.pids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    async def open(self, client: HttpClient) -> Channel:
        return Channel(uuid.uuid4().hex)  # Nchan creates channels on first use

    def sse(self, channel: Channel, replay: bool = False) -> bytes:
        return sse_request(f"/{'replay' if replay else 'sub'}/{channel.id}", self.port)

    def ws(self, channel: Channel) -> bytes:
        return ws_request(f"/sub/{channel.id}", self.port)

    async def publish(self, client: HttpClient, channel: Channel, data: bytes) -> None:
        status, answer = await client.request(
            "POST", f"/pub/{channel.id}", data, {"Accept": "application/json"}
        )
        if status not in (200, 201, 202):
            raise RuntimeError(f"publish failed: {status} {answer[:200]!r}")


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
