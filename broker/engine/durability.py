"""Durable writes: an append is acknowledged only once Redis made it durable.

By default an append is acknowledged once the primary ran it: with `appendfsync everysec` that
survives a Redis process crash, not a host crash (up to ~1 s of writes), nor a failover to an
asynchronous replica that had not received them yet. With `--durable-writes` the engine follows
each append, on the same connection, with

- `WAITAOF 1 <replicas> <timeout>` on Redis >= 7.2 with AOF on (fsynced on the primary, and on
  that many replicas), or
- `WAIT <replicas> <timeout>` otherwise (received by that many replicas: survives a failover).

When the acknowledgements do not come within the timeout the write is stored but not known to be
durable: the caller gets DurabilityTimeout (a Redis TimeoutError: HTTP 503 engine_unavailable)
and a retry with the same writer id and seq is answered as a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:  # redis_layout imports this module
    from broker.engine.redis_layout import Client, LuaScript

DEFAULT_TIMEOUT_MS = 1000


class DurabilityTimeout(RedisTimeoutError):
    """The write ran but was not acknowledged as durable in time."""


@dataclass(frozen=True, slots=True)
class Durability:
    """How the engine waits after each append (see the module doc)."""

    replicas: int = 0  # replicas that must acknowledge
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    waitaof: bool = True  # WAITAOF (fsync on the primary); else WAIT (replicas only)

    @property
    def command(self) -> tuple[Any, ...]:
        if self.waitaof:
            return ("WAITAOF", 1, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, reply: Any) -> None:
        if self.waitaof:
            local, replicas = int(reply[0]), int(reply[1])
            if local >= 1 and replicas >= self.replicas:
                return
            got = f"fsynced locally: {local}, by replicas: {replicas}/{self.replicas}"
        else:
            replicas = int(reply)
            if replicas >= self.replicas:
                return
            got = f"acknowledged by {replicas}/{self.replicas} replicas"
        raise DurabilityTimeout(f"write not durable within {self.timeout_ms} ms ({got})")


async def plan(client: Client, replicas: int, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Durability:
    """The way to wait on this server; ValueError when it cannot make writes durable."""
    info = await client.info("server")
    persistence = await client.info("persistence")
    if isinstance(client, RedisCluster):  # one answer per node: all run the same setup
        info = next(iter(info.values())) if _per_node(info) else info
        persistence = next(iter(persistence.values())) if _per_node(persistence) else persistence
    version = tuple(int(part) for part in str(info.get("redis_version", "0")).split(".")[:2])
    aof = int(persistence.get("aof_enabled", 0)) == 1
    if version >= (7, 2) and aof:
        return Durability(replicas, timeout_ms, waitaof=True)
    if replicas >= 1:
        return Durability(replicas, timeout_ms, waitaof=False)
    why = "AOF is off" if version >= (7, 2) else f"Redis {'.'.join(map(str, version))} < 7.2"
    raise ValueError(
        f"--durable-writes: {why}, so there is no WAITAOF; turn appendonly on (Redis >= 7.2) or "
        "wait for replicas with --durable-replicas N (N >= 1)"
    )


def _per_node(reply: Any) -> bool:
    return (
        isinstance(reply, dict) and bool(reply) and all(isinstance(v, dict) for v in reply.values())
    )


async def run_durably(
    client: Client,
    script: LuaScript,
    keys: Sequence[str],
    args: Sequence[Any],
    durability: Durability,
) -> tuple[Any, Any]:
    """Run the script, then the durability wait on the same connection (WAIT and WAITAOF
    concern the writes of the connection they are sent on). Returns both replies."""
    if isinstance(client, RedisCluster):
        return await _on_cluster_node(client, script, keys, args, durability)
    async with client.client() as single:  # one connection for both commands
        reply = await script(single, keys, args)
        acked = await single.execute_command(*durability.command)  # type: ignore[no-untyped-call]
    return reply, acked


async def _on_cluster_node(
    client: RedisCluster,
    script: LuaScript,
    keys: Sequence[str],
    args: Sequence[Any],
    durability: Durability,
) -> tuple[Any, Any]:
    node = client.get_node_from_key(keys[0])
    if node is None:
        raise ClusterDownError(f"no node serves {keys[0]!r} right now")  # retried
    connection = node.acquire_connection()
    try:
        for attempt in range(2):
            command = ("EVALSHA", script.sha, len(keys), *keys, *args)
            await connection.send_packed_command(
                connection.pack_commands([command, durability.command])
            )
            try:
                reply = await connection.read_response()
            except NoScriptError:
                await connection.read_response()  # the WAIT's answer, for nothing
                if attempt:
                    raise
                await connection.send_command("SCRIPT", "LOAD", script.body)
                await connection.read_response()
                continue
            except RedisError:
                await connection.read_response()  # keep the connection in step
                raise
            return reply, await connection.read_response()
        raise AssertionError("unreachable")
    except (RedisError, OSError) as exc:
        if not isinstance(exc, NoScriptError) and "MOVED" in str(exc):
            await client.nodes_manager.initialize()  # the slot is served elsewhere now
        await connection.disconnect()
        raise
    finally:
        node.release(connection)
