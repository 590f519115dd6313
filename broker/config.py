"""Broker settings: one frozen dataclass, filled from flags and UNBROKEN_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from broker.engine.base import Limits

MIN_WRITER_TIMEOUT = 5  # seconds; below that a GC pause or a slow LLM token would end channels
MAX_WRITER_TIMEOUT = 86_400


def valid_writer_timeout(value: object) -> bool:
    """0 (no lease) or MIN..MAX whole seconds."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value == 0 or MIN_WRITER_TIMEOUT <= value <= MAX_WRITER_TIMEOUT)
    )


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    engine: str = "memory"  # "memory" | "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "unbroken"
    # "Acknowledged means durable": each append waits for WAITAOF (Redis >= 7.2 with AOF) or
    # WAIT for durable_replicas replicas, at most durable_timeout ms. See docs/operations.md.
    durable_writes: bool = False
    durable_replicas: int = 0
    durable_timeout: int = 1000
    # Key ring spec "kid:secret,kid2:secret2". Empty: a random secret per start (dev only).
    secret: str = ""
    public_url: str = ""  # base URL put into tokens; empty: derived from each request
    open_policy: str = "open"  # "open" (rate-limited per client) | "key"
    app_keys: tuple[str, ...] = ()
    admin_token: str = ""
    # Local development only: admin routes answer without the admin token (a WARNING at start).
    admin_open: bool = False
    open_rate: float = 5.0  # channel opens per second per client address under "open"
    open_burst: int = 50
    # Caps over all addresses (0 = none): per-address limits alone let rotating source addresses
    # open channels without bound. max_channels applies to the memory engine (its RAM).
    max_open_rate: float = 200.0  # channel opens per second, all clients together
    max_channels: int = 100_000
    heartbeat: float = 15.0
    # Writer lease, seconds (0: none): a channel whose writer neither writes nor heartbeats for
    # this long ends with error {"code": "writer_timeout"}. The default for channels opened
    # without `writer_timeout`.
    writer_timeout: int = 60
    token_ttl: int = 86_400
    limits: Limits = field(default_factory=Limits)
    max_message_bytes: int = 256 * 1024
    max_body_bytes: int = 1024 * 1024
    max_pending_bytes: int = 1024 * 1024  # per subscriber, beyond that it is disconnected
    # A reader whose socket takes nothing for this long (live or while the broker replays
    # history to it) is disconnected (slow_consumer); it resumes from its last id.
    stall_timeout: float = 30.0
    workers: int = 1
    log_json: bool = False
    log_level: str = "info"
    shutdown_timeout: float = 10.0
    # A connection must send a complete request head within header_timeout (slowloris), and an
    # idle keep-alive connection is closed after keepalive_timeout. Streaming readers are in a
    # request, so neither applies to them: heartbeats keep them alive.
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 0  # 0: as many as the open-files limit allows (less a reserve)

    def with_overrides(self, **values: Any) -> Settings:
        limit_names = {f.name for f in fields(Limits)}
        limit_values = {k: values.pop(k) for k in list(values) if k in limit_names}
        settings = replace(self, **{k: v for k, v in values.items() if v is not None})
        if limit_values := {k: v for k, v in limit_values.items() if v is not None}:
            settings = replace(settings, limits=replace(settings.limits, **limit_values))
        return settings

    def validate(self) -> None:
        if not valid_writer_timeout(self.writer_timeout):
            raise ValueError(
                f"writer_timeout must be 0 (no lease) or {MIN_WRITER_TIMEOUT} to "
                f"{MAX_WRITER_TIMEOUT} seconds, not {self.writer_timeout!r}"
            )
        if self.engine not in ("memory", "redis"):
            raise ValueError(f"engine must be 'memory' or 'redis', not {self.engine!r}")
        if self.open_policy not in ("open", "key"):
            raise ValueError(f"open policy must be 'open' or 'key', not {self.open_policy!r}")
        if self.open_policy == "key" and not self.app_keys:
            raise ValueError("the 'key' open policy needs at least one app key (UNBROKEN_APP_KEYS)")
        if self.workers > 1 and self.engine != "redis":
            raise ValueError("several workers need the redis engine (they share no memory)")
        if self.durable_writes and self.engine != "redis":
            raise ValueError("--durable-writes needs the redis engine")
        if self.durable_replicas < 0 or not 1 <= self.durable_timeout <= 60_000:
            raise ValueError("durable replicas must be >= 0 and the timeout 1..60000 ms")
        if self.workers > 1 and not self.secret:
            raise ValueError("several workers need a shared secret (UNBROKEN_SECRET)")
        if not (self.max_open_rate >= 0 and self.max_channels >= 0):  # `not >=` also catches NaN
            raise ValueError("--max-open-rate and --max-channels must be >= 0 (0: no cap)")


_ENV_CASTS: dict[str, Any] = {
    "host": str,
    "port": int,
    "engine": str,
    "redis_url": str,
    "redis_prefix": str,
    "durable_replicas": int,
    "durable_timeout": int,
    "secret": str,
    "public_url": str,
    "open_policy": str,
    "admin_token": str,
    "open_rate": float,
    "open_burst": int,
    "max_open_rate": float,
    "max_channels": int,
    "heartbeat": float,
    "writer_timeout": int,
    "stall_timeout": float,
    "token_ttl": int,
    "max_message_bytes": int,
    "max_body_bytes": int,
    "max_pending_bytes": int,
    "workers": int,
    "log_level": str,
    "shutdown_timeout": float,
    "header_timeout": float,
    "keepalive_timeout": float,
    "max_connections": int,
    "idle_ttl": int,
    "retention": int,
    "max_messages": int,
}


# Secrets may come from a file (Docker/Kubernetes secrets; keeps them out of `ps` and shell
# history): UNBROKEN_SECRET_FILE, UNBROKEN_ADMIN_TOKEN_FILE, or --secret-file/--admin-token-file.
SECRET_FILE_SETTINGS = ("secret", "admin_token")


def read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the {what} file {path!r}: {exc}") from exc
    if not value:
        raise ValueError(f"the {what} file {path!r} is empty")
    return value


ENV_SETTINGS = (*_ENV_CASTS, "admin_open")  # settings read from UNBROKEN_<NAME>


def settings_from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    values: dict[str, Any] = {}
    for name in SECRET_FILE_SETTINGS:
        path = environ.get(f"UNBROKEN_{name.upper()}_FILE")
        if path and not environ.get(f"UNBROKEN_{name.upper()}"):
            values[name] = read_secret_file(path, f"UNBROKEN_{name.upper()}_FILE")
    for name, cast in _ENV_CASTS.items():
        raw = environ.get(f"UNBROKEN_{name.upper()}")
        if raw is not None and raw != "":
            try:
                values[name] = cast(raw)
            except ValueError as exc:
                raise ValueError(f"UNBROKEN_{name.upper()}={raw!r}: {exc}") from exc
    if keys := environ.get("UNBROKEN_APP_KEYS"):
        values["app_keys"] = tuple(k.strip() for k in keys.split(",") if k.strip())
    if environ.get("UNBROKEN_LOG_JSON", "").lower() in ("1", "true", "yes"):
        values["log_json"] = True
    if environ.get("UNBROKEN_ADMIN_OPEN", "").lower() in ("1", "true", "yes"):
        values["admin_open"] = True
    if environ.get("UNBROKEN_DURABLE_WRITES", "").lower() in ("1", "true", "yes"):
        values["durable_writes"] = True
    return Settings().with_overrides(**values)
