"""One way to turn a Redis URL into a redis-py asyncio client, for the broker and the worker.

    client = connect("redis://127.0.0.1:6379/0")                  # one server (or a managed
    client = connect("rediss://:secret@host:6380/0")              #   primary endpoint), TLS
    client = connect("redis+cluster://h1:7000,h2:7001/")          # Redis Cluster (any nodes)
    client = connect("redis://h1:7000/?cluster=true")             # the same, one seed node
    client = connect("redis+sentinel://s1:26379,s2:26379/mymaster/0")  # Sentinel-managed

Query options are redis-py's URL options (socket_timeout, ssl_cert_reqs, ...); for Sentinel also
`sentinel_password` / `sentinel_username` (the credentials in the URL are the data nodes').
Replies stay bytes (payloads are msgpack), and a burst of commands waits for a free pooled
connection instead of failing with "Too many connections".

`retrying()` is the engine's and the worker's one policy for failover: what may be retried, for
how long, and when pooled connections must be dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

POOL_TIMEOUT = 10.0  # seconds a command waits for a free pooled connection before failing
MAX_CONNECTIONS = 64
SOCKET_TIMEOUT = 5.0  # a frozen server fails a command after this long (it is then retried)
# A pooled connection idle this long is PINGed before use (and replaced if dead): after a Redis
# restart every pooled connection is dead, and a command sent on one would fail with its reply
# lost, which is not safely retried for a write.
HEALTH_CHECK_INTERVAL = 1.0
RETRY_DEADLINE = 15.0  # seconds an operation keeps retrying through a failover
RETRY_MIN = 0.05
RETRY_MAX = 1.0

# Called with (command name, seconds) after every command a client sends (not pipelines).
CommandObserver = Callable[[str, float], None]

# Replies that say the command did NOT run: always safe to retry (after a failover, a restart,
# a slot migration). Matched on the message too, because an error raised by redis.call() inside
# a Lua script reaches us as a generic ResponseError carrying the same words.
_NOT_RUN = (
    ReadOnlyError,
    BusyLoadingError,
    MasterDownError,
    ClusterDownError,
    TryAgainError,
    MovedError,
    AskError,
    SlotNotCoveredError,
)
_NOT_RUN_WORDS = ("READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK ")
# Errors after which the command may or may not have run (the reply was lost).
_LOST_REPLY = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)


class ObservedRedis(Redis):
    """A Redis client that can report the latency of each command (for /metrics)."""

    command_observer: CommandObserver | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        observer = self.command_observer
        if observer is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            observer(_command_name(args[0]), time.perf_counter() - start)


class ObservedRedisCluster(RedisCluster):
    """A RedisCluster client that can report the latency of each command (for /metrics)."""

    command_observer: CommandObserver | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        observer = self.command_observer
        if observer is None:
            return await super().execute_command(*args, **kwargs)
        start = time.perf_counter()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            observer(_command_name(args[0]), time.perf_counter() - start)


AnyRedis = ObservedRedis | ObservedRedisCluster

# redis-py retries no command by itself (retry_on_error empty): failover retries are
# retrying()'s job, which knows whether a command may run twice. Its Retry still serves the
# health check: a dead idle connection is reconnected once before the command is sent.
_NO_COMMAND_RETRY: dict[str, Any] = {"retry": Retry(NoBackoff(), 1), "retry_on_error": []}


def _command_name(name: Any) -> str:
    return (name.decode() if isinstance(name, bytes) else str(name)).upper()


def _hosts(netloc: str, default_port: int) -> tuple[str, list[tuple[str, int]]]:
    """`user:pass@h1:p1,h2:p2` -> ("user:pass@", [(h1, p1), (h2, p2)])."""
    userinfo, _, hostlist = netloc.rpartition("@")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ValueError(f"a host is missing in {netloc!r}")
        try:
            hosts.append((host.strip("[]"), int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"bad port in {item!r}") from None
    return (userinfo + "@" if userinfo else ""), hosts


def _options(
    scheme: str, userinfo: str, host: tuple[str, int], path: str, query: str
) -> dict[str, Any]:
    """redis-py's own parsing of credentials and query options (host/port/db removed)."""
    options: dict[str, Any] = dict(
        parse_url(f"{scheme}://{userinfo}{host[0]}:{host[1]}{path}?{query}")
    )
    for key in ("host", "port", "db", "connection_class"):
        options.pop(key, None)
    return options


def connect(url: str, *, max_connections: int = MAX_CONNECTIONS, **opts: Any) -> AnyRedis:
    """A client for `url` (not connected yet: the first command connects). See the module doc.

    Raises ValueError for a URL it cannot use, with a message that says why.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    opts.setdefault("socket_timeout", SOCKET_TIMEOUT)
    opts.setdefault("socket_connect_timeout", SOCKET_TIMEOUT)
    opts.setdefault("health_check_interval", HEALTH_CHECK_INTERVAL)
    if query.pop("decode_responses", "").lower() in ("1", "true", "yes", "on") or opts.get(
        "decode_responses"
    ):
        raise ValueError("the Redis client must return bytes (decode_responses=False)")
    cluster_flag = query.pop("cluster", "").lower()
    rest = urlencode(query)
    if scheme in ("redis+cluster", "rediss+cluster") or (
        scheme in ("redis", "rediss") and cluster_flag in ("1", "true", "yes", "on")
    ):
        base = "rediss" if scheme.startswith("rediss") else "redis"
        userinfo, hosts = _hosts(parts.netloc, 6379)
        options = _options(base, userinfo, hosts[0], "", rest)
        options.pop("path", None)
        # No command retry in the client either (it would repeat a write whose reply was
        # lost); MOVED/ASK redirects are followed regardless, and after a connection error the
        # client re-reads the slot map on its next command, which retrying() sends.
        return ObservedRedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            max_connections=max_connections,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            **{**options, **opts},
        )
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        base = "rediss" if scheme.startswith("rediss") else "redis"
        userinfo, hosts = _hosts(parts.netloc, 26379)
        segments = [s for s in parts.path.split("/") if s]
        if not segments or len(segments) > 2:
            raise ValueError(
                "a Sentinel URL names the service and optionally the db: "
                "redis+sentinel://host:26379,host2:26379/<service>/<db>"
            )
        service = segments[0]
        db = int(segments[1]) if len(segments) == 2 else 0
        sentinel_opts = {
            key: query.pop(f"sentinel_{key}")
            for key in ("password", "username")
            if f"sentinel_{key}" in query
        }
        options = _options(base, userinfo, hosts[0], "", urlencode(query))
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts,
            sentinel_kwargs={
                **sentinel_opts,
                "socket_timeout": opts["socket_timeout"],
                "socket_connect_timeout": opts["socket_connect_timeout"],
            },
        )
        client = sentinel.master_for(
            service,
            redis_class=ObservedRedis,
            db=db,
            decode_responses=False,
            **_NO_COMMAND_RETRY,
            **{**options, **opts},
        )
        return cast(ObservedRedis, client)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss://, "
            "redis+cluster:// or redis+sentinel://"
        )
    plain = parts._replace(query=rest).geturl()
    pool = BlockingConnectionPool.from_url(
        plain, max_connections=max_connections, timeout=POOL_TIMEOUT, **_NO_COMMAND_RETRY, **opts
    )
    return cast(ObservedRedis, ObservedRedis.from_pool(pool))


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def not_run(exc: BaseException) -> bool:
    """The server refused the command without running it (failover, loading, slot moved)."""
    if isinstance(exc, _NOT_RUN):
        return True
    if isinstance(exc, ResponseError):
        message = str(exc)
        return any(word in message for word in _NOT_RUN_WORDS)
    if isinstance(exc, RedisConnectionError) and "Error connecting" in str(exc):
        return True  # nothing was sent
    return False


def transient(exc: BaseException) -> bool:
    """Worth retrying: refused without running, or a connection that broke."""
    return not_run(exc) or (isinstance(exc, _LOST_REPLY) and not isinstance(exc, ResponseError))


async def drop_stale_connections(client: Any, exc: BaseException) -> None:
    """After READONLY (a demoted primary) or a broken connection, forget pooled connections so
    that the next command connects afresh: to the new primary (Sentinel asks again; a DNS name
    of a managed endpoint is resolved again). The cluster client re-reads the slot map itself."""
    if is_cluster(client):
        if isinstance(exc, ReadOnlyError) or "READONLY" in str(exc):
            with contextlib.suppress(RedisError, OSError):
                await client.nodes_manager.initialize()
        return
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        # All of them after READONLY (every one points at the demoted node); else the idle ones
        # (a restart left them all dead, and the broken one is gone already).
        readonly = isinstance(exc, ReadOnlyError) or "READONLY" in str(exc)
        with contextlib.suppress(RedisError, OSError):
            await pool.disconnect(inuse_connections=readonly)


_T = TypeVar("_T")


async def retrying(
    call: Callable[[], Awaitable[_T]],
    client: Any,
    *,
    idempotent: bool,
    deadline: float = RETRY_DEADLINE,
) -> _T:
    """Run `call`, retrying through a failover until `deadline` seconds have passed.

    Refusals that guarantee the command did not run (READONLY, LOADING, MASTERDOWN, CLUSTERDOWN,
    TRYAGAIN, MOVED/ASK, a failed connect) are always retried; a broken connection (the reply
    lost: the command may have run) only when `idempotent`. The last error is raised.
    """
    give_up = time.monotonic() + deadline
    delay = RETRY_MIN
    while True:
        try:
            return await call()
        except Exception as exc:
            # A write that ran but was not made durable in time is not retried here: a retry
            # would be a duplicate, and say nothing about durability.
            durable_timeout = type(exc).__name__ == "DurabilityTimeout"
            retry = not durable_timeout and (not_run(exc) or (idempotent and transient(exc)))
            if not retry or time.monotonic() + delay > give_up:
                raise
            # Debug: an outage's one WARNING per interval is broker/errors.py's job.
            log.debug("redis: %s; retrying in %.2fs", exc.__class__.__name__, delay)
            await drop_stale_connections(client, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
