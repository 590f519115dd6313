"""Private multi-node Redis deployments for tests: a 6-node Cluster and a Sentinel-managed pair.

Every server runs on a free port in a temporary directory and is killed afterwards. Failover
timeouts are short (1 s) so that a test can kill -9 a primary and see a replica promoted within a
few seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.redis_server import free_port, start_redis
from tests.tools import need_tool

NODE_TIMEOUT_MS = 1000


def tools_missing() -> str | None:
    """Why these deployments cannot be had here (None when they can)."""
    for tool, package in (("redis-server", "redis-server"), ("redis-cli", "redis-tools")):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (apt-get install {package})"
    return None


def need_redis_tools() -> None:
    """Skip (fail under CI, which installs them) without redis-server and redis-cli. Sentinel
    runs as `redis-server --sentinel`: no other binary is needed."""
    need_tool("redis-server")
    need_tool("redis-cli", "redis-tools")


def _send(port: int, *command: str, timeout: float = 1.0) -> bytes:
    """One command over a raw socket (RESP), answer as raw bytes. No client library needed."""
    payload = f"*{len(command)}\r\n".encode()
    for part in command:
        data = part.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(payload)
        chunks = b""
        conn.settimeout(timeout)
        while True:
            chunk = conn.recv(65536)
            chunks += chunk
            if not chunk or _complete(chunks):
                return chunks


def _complete(reply: bytes) -> bool:
    if reply[:1] in (b"+", b"-", b":"):
        return reply.endswith(b"\r\n")
    if reply[:1] == b"$":
        header, _, rest = reply.partition(b"\r\n")
        size = int(header[1:])
        return size < 0 or len(rest) >= size + 2
    return reply.endswith(b"\r\n")


def _info(port: int, section: str) -> dict[str, str]:
    """INFO <section>, or CLUSTER INFO for "cluster"."""
    try:
        raw = (
            _send(port, "CLUSTER", "INFO") if section == "cluster" else _send(port, "INFO", section)
        )
    except OSError:
        return {}
    fields = {}
    for line in raw.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value
    return fields


def _wait(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class _Server:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def _start(workdir: Path, port: int, *args: str) -> _Server:
    folder = workdir / str(port)
    folder.mkdir(exist_ok=True)
    return _Server(port, start_redis(port, str(folder), "--appendonly", "no", *args))


@dataclass
class Standalone:
    """One server that a test can freeze (SIGSTOP), thaw, kill and restart on the same port."""

    workdir: Path
    server: _Server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server.port}/0"

    def freeze(self) -> None:
        self.server.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.server.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """kill -9, then start again on the same port (empty: no persistence)."""
        self.server.kill()
        self.server = _start(self.workdir, self.server.port)


@contextlib.contextmanager
def redis_standalone() -> Iterator[Standalone]:
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-standalone-"))
    deployment = Standalone(workdir, _start(workdir, free_port()))
    try:
        yield deployment
    finally:
        deployment.thaw()
        deployment.server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Cluster:
    """3 primaries + 3 replicas."""

    servers: list[_Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.servers if s.alive)
        return f"redis+cluster://{nodes}/"

    def primaries(self) -> list[int]:
        return [
            s.port
            for s in self.servers
            if s.alive and _info(s.port, "replication").get("role") == "master"
        ]

    def healthy(self) -> bool:
        alive = [s for s in self.servers if s.alive]
        if not all(_info(s.port, "cluster").get("cluster_state") == "ok" for s in alive):
            return False
        return len(self.primaries()) == 3

    def kill_primary(self, port: int) -> None:
        """kill -9 a primary (its replica gets promoted after NODE_TIMEOUT_MS)."""
        server = next(s for s in self.servers if s.port == port)
        server.kill()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        _wait(self.healthy, "a healthy cluster with 3 primaries", timeout)


def start_cluster_nodes(workdir: Path, count: int, *args: str) -> list[_Server]:
    """`count` cluster-enabled servers (no slots yet: see form_cluster), `args` appended. When
    one fails to start, those already started are killed."""
    servers: list[_Server] = []
    try:
        for _ in range(count):
            port = free_port()
            servers.append(
                _start(
                    workdir,
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    # The bus port defaults to port + 10000, which a free high port overflows.
                    "--cluster-port",
                    str(free_port()),
                    *args,
                )
            )
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def form_cluster(servers: list[_Server], *, replicas: int) -> None:
    """`redis-cli --cluster create` over these nodes, with `replicas` replicas per primary."""
    subprocess.run(
        [
            "redis-cli",
            "--cluster",
            "create",
            *[f"127.0.0.1:{s.port}" for s in servers],
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextlib.contextmanager
def redis_cluster() -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-cluster-"))
    cluster = Cluster()
    try:
        cluster.servers.extend(
            start_cluster_nodes(
                workdir,
                6,
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # Promote a replica however long it was out of touch: the test kills a
                # primary a moment after the cluster formed.
                "--cluster-replica-validity-factor",
                "0",
                "--stream-node-max-bytes",
                "1024",
            )
        )
        form_cluster(cluster.servers, replicas=1)
        cluster.wait_healthy()
        # Every replica has finished its first sync, so a promotion loses nothing written later.
        _wait(
            lambda: all(
                _info(s.port, "replication").get("master_link_status") in (None, "up")
                for s in cluster.servers
            ),
            "replicas in sync",
        )
        yield cluster
    finally:
        for server in cluster.servers:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class SentinelPair:
    """A primary, a replica and one Sentinel watching them (quorum 1)."""

    service: str
    primary: _Server
    replica: _Server
    sentinel: _Server

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}/0"

    def server(self, port: int | None) -> _Server:
        return next(s for s in (self.primary, self.replica) if s.port == port)

    def role(self, port: int) -> str | None:
        return _info(port, "replication").get("role")

    def in_sync(self) -> bool:
        """Both data nodes up, one primary, its replica's link up."""
        roles = {s.port: self.role(s.port) for s in (self.primary, self.replica)}
        replicas = [port for port, role in roles.items() if role == "slave"]
        return sorted(roles.values(), key=str) == ["master", "slave"] and all(
            _info(port, "replication").get("master_link_status") == "up" for port in replicas
        )

    def wait_in_sync(self, timeout: float = 20.0) -> None:
        _wait(self.in_sync, "primary and replica in sync", timeout)

    def switchover(self) -> None:
        """Ask Sentinel to promote the replica; the old primary stays up as a replica."""
        deadline = time.monotonic() + 20
        while True:
            reply = _send(self.sentinel.port, "SENTINEL", "FAILOVER", self.service)
            if reply.startswith(b"+OK"):
                return
            # NOGOODSLAVE until Sentinel's view of the replica is fresh again.
            if time.monotonic() > deadline:
                raise RuntimeError(f"SENTINEL FAILOVER: {reply!r}")
            time.sleep(0.2)

    def current_primary(self) -> int | None:
        try:
            raw = _send(self.sentinel.port, "SENTINEL", "get-master-addr-by-name", self.service)
        except OSError:
            return None
        parts = raw.split(b"\r\n")
        return int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else None


@contextlib.contextmanager
def redis_sentinel() -> Iterator[SentinelPair]:
    workdir = Path(tempfile.mkdtemp(prefix="unbroken-sentinel-"))
    servers: list[_Server] = []
    service = "unbroken-test"
    try:
        primary = _start(workdir, free_port())
        servers.append(primary)
        replica = _start(workdir, free_port(), "--replicaof", "127.0.0.1", str(primary.port))
        servers.append(replica)
        _wait(
            lambda: _info(replica.port, "replication").get("master_link_status") == "up",
            "the replica in sync",
        )
        sentinel_port = free_port()
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {service} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {service} 5000\n"
        )
        process = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        )
        sentinel = _Server(sentinel_port, process)
        servers.append(sentinel)
        pair = SentinelPair(service, primary, replica, sentinel)
        # Ready once it knows the replica (it learns of it from the primary's INFO).
        _wait(
            lambda: _sentinel_knows_replica(sentinel_port, service),
            "sentinel to discover the replica",
        )
        yield pair
    finally:
        for server in servers:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _sentinel_knows_replica(port: int, service: str) -> bool:
    try:
        return f"{service}".encode() in _send(port, "SENTINEL", "replicas", service) or (
            b"slaves=1" in _send(port, "INFO", "sentinel")
        )
    except OSError:
        return False


__all__ = [
    "Cluster",
    "SentinelPair",
    "Standalone",
    "need_redis_tools",
    "redis_cluster",
    "redis_sentinel",
    "redis_standalone",
    "tools_missing",
]
