"""`python -m broker serve | channels | inspect`: settings from flags over UNBROKEN_* variables."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web

from broker.app import create_app
from broker.config import (
    ENV_SETTINGS,
    SECRET_FILE_SETTINGS,
    Settings,
    read_secret_file,
    settings_from_env,
)
from broker.errors import engine_unavailable
from broker.logs import configure_logging
from broker.server import connection_cap, raise_fd_limit, runner_for, serve_until_signalled
from broker.startup import (
    StartupError,
    check_engine,
    check_port_free,
    engine_error,
    listen_socket,
)
from broker.urls import broker_url

log = logging.getLogger("unbroken")


SERVE_DESCRIPTION = """\
Run the Unbroken broker: the channel API, the reader transports (SSE, chunked, WebSocket,
long-poll), the dashboard, /metrics and /openapi.json.

Every option can also come from its UNBROKEN_* environment variable (a flag wins over the
variable, which wins over the default). Keep secrets out of the command line (it shows in `ps`):
use UNBROKEN_SECRET / UNBROKEN_ADMIN_TOKEN or --secret-file / --admin-token-file."""

SERVE_EPILOG = """\
example:
  export UNBROKEN_SECRET="k1:$(openssl rand -hex 32)"
  python -m broker serve --redis redis://127.0.0.1:6379/0
  python -m broker serve --secret-file /run/secrets/key --admin-token-file /run/secrets/admin"""

# How a default that is empty or off reads in --help.
_DEFAULT_WORDS = {
    "secret": "a random key per start, for development only",
    "admin_token": "none: admin routes disabled",
    "public_url": "from each request",
    "app_keys": "none",
}


def _setting_default(dest: str) -> str | None:
    """The default of the setting an option sets, as --help shows it; None when there is none."""
    if dest in _DEFAULT_WORDS:
        return _DEFAULT_WORDS[dest]
    settings = Settings()
    for holder in (settings, settings.limits):
        if dest in getattr(type(holder), "__dataclass_fields__", {}):
            value = getattr(holder, dest)
            if isinstance(value, bool):
                return "on" if value else "off"
            return (
                None
                if value in ("", ())
                else f"{value:g}"
                if isinstance(value, float)
                else str(value)
            )
    return None


class _SettingsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's environment variable and default (taken from Settings, so the help
    cannot drift from the code; argparse's own defaults are None: flags only override)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        env = f"UNBROKEN_{action.dest.upper()}"
        extra = []
        if action.option_strings and env in _ENV_NAMES and env not in text:
            extra.append(env)
        default = _setting_default(action.dest) if action.option_strings else None
        if default is not None and "default" not in text:
            extra.append(f"default: {default}")
        return f"{text} ({'; '.join(extra)})" if extra else text


_ENV_NAMES = {
    f"UNBROKEN_{name.upper()}" for name in (*ENV_SETTINGS, "app_keys", "log_json", "durable_writes")
}


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the broker",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=_SettingsHelpFormatter,
    )
    serve.add_argument("--host", help="address to bind")
    serve.add_argument("--port", type=int, help="port")
    serve.add_argument("--engine", choices=["memory", "redis"], help="where channels live")
    serve.add_argument("--redis", dest="redis_url", help="Redis URL; implies --engine redis")
    serve.add_argument("--redis-prefix", help="key prefix (UNBROKEN_REDIS_PREFIX)")
    serve.add_argument(
        "--durable-writes",
        action="store_true",
        default=None,
        help="answer an append only once Redis made it durable: WAITAOF on Redis >= 7.2 with "
        "AOF, else WAIT for replicas",
    )
    serve.add_argument(
        "--durable-replicas",
        type=int,
        help="replicas that must acknowledge each durable append",
    )
    serve.add_argument(
        "--durable-timeout",
        type=int,
        help="ms a durable append waits for its acknowledgements, then answers 503",
    )
    serve.add_argument(
        "--secret",
        help="kid:secret[,kid:secret] key ring (UNBROKEN_SECRET; prefer the env or a file: "
        "arguments show in `ps`)",
    )
    serve.add_argument(
        "--secret-file", help="read the key ring from this file (UNBROKEN_SECRET_FILE)"
    )
    serve.add_argument("--public-url", help="base URL written into tokens")
    serve.add_argument("--open-policy", choices=["open", "key"], help="who may open channels")
    serve.add_argument("--app-key", dest="app_keys", action="append", help="accepted app key")
    serve.add_argument("--admin-token", help="token for admin routes (UNBROKEN_ADMIN_TOKEN)")
    serve.add_argument(
        "--admin-token-file", help="read the admin token from this file (UNBROKEN_ADMIN_TOKEN_FILE)"
    )
    serve.add_argument(
        "--admin-open",
        action="store_true",
        default=None,
        help="admin routes without a token: local development only (UNBROKEN_ADMIN_OPEN=1)",
    )
    serve.add_argument(
        "--max-open-rate",
        type=float,
        help="channel opens per second over all clients, 0 = no cap (UNBROKEN_MAX_OPEN_RATE)",
    )
    serve.add_argument(
        "--max-channels",
        type=int,
        help="channels the memory engine holds, 0 = no cap (UNBROKEN_MAX_CHANNELS)",
    )
    serve.add_argument("--heartbeat", type=float, help="seconds between heartbeats")
    serve.add_argument(
        "--stall-timeout",
        type=float,
        help="seconds a reader's socket may take nothing (live or mid-replay) before it is "
        "disconnected (slow_consumer)",
    )
    serve.add_argument(
        "--writer-timeout",
        type=int,
        help="writer lease in seconds for channels opened without one: a channel whose writer "
        "neither writes nor heartbeats for this long ends with error writer_timeout; 0 = none",
    )
    serve.add_argument("--idle-ttl", type=int, help="seconds an unwritten open channel lives")
    serve.add_argument("--retention", type=int, help="seconds an ended channel stays readable")
    serve.add_argument("--max-messages", type=int, help="events kept per channel")
    serve.add_argument("--max-message-bytes", type=int, help="largest message, as JSON")
    serve.add_argument(
        "--header-timeout", type=float, help="seconds a request head may take to arrive"
    )
    serve.add_argument(
        "--keepalive-timeout", type=float, help="seconds an idle keep-alive connection lives"
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        help="open connections; 0: as many as the open-files limit allows",
    )
    serve.add_argument("--workers", type=int, help="processes sharing the port (redis engine)")
    serve.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    serve.add_argument("--log-level", help="debug | info | warning | error")


def _client_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    channels = sub.add_parser("channels", help="list live channels of a running broker")
    channels.add_argument(
        "--limit", type=int, default=1000, help="at most this many, newest first (1-10000)"
    )
    inspect = sub.add_parser("inspect", help="show a channel's state and latest events")
    inspect.add_argument("channel")
    inspect.add_argument("--tail", type=int, default=20, help="how many latest events to show")
    for parser in (channels, inspect):
        parser.add_argument(
            "--broker",
            default=os.environ.get("UNBROKEN_URL", "http://127.0.0.1:8080"),
            help="the broker's URL (UNBROKEN_URL)",
        )
        parser.add_argument(
            "--admin-token",
            default=os.environ.get("UNBROKEN_ADMIN_TOKEN", ""),
            help="admin token (UNBROKEN_ADMIN_TOKEN)",
        )
        parser.add_argument(
            "--admin-token-file",
            default=os.environ.get("UNBROKEN_ADMIN_TOKEN_FILE", ""),
            help="read the admin token from this file (UNBROKEN_ADMIN_TOKEN_FILE)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _client_parser(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {
        name: getattr(args, name)
        for name in (
            "host",
            "port",
            "engine",
            "redis_url",
            "redis_prefix",
            "durable_writes",
            "durable_replicas",
            "durable_timeout",
            "secret",
            "public_url",
            "open_policy",
            "admin_token",
            "admin_open",
            "max_open_rate",
            "max_channels",
            "heartbeat",
            "writer_timeout",
            "stall_timeout",
            "idle_ttl",
            "retention",
            "max_messages",
            "max_message_bytes",
            "header_timeout",
            "keepalive_timeout",
            "max_connections",
            "workers",
            "log_json",
            "log_level",
        )
    }
    for name in SECRET_FILE_SETTINGS:
        path = getattr(args, f"{name}_file")
        if path and values[name] is None:
            values[name] = read_secret_file(path, f"--{name.replace('_', '-')}-file")
    if args.app_keys:
        values["app_keys"] = tuple(args.app_keys)
    if args.redis_url and not args.engine:
        values["engine"] = "redis"
    return settings_from_env().with_overrides(**values)


def _run_process(settings: Settings, sock: socket.socket) -> None:
    configure_logging(settings.log_json, settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional on platforms without it
        pass
    app = create_app(settings)
    app.on_startup.append(_tune_gc)

    def listening() -> None:  # called once the site accepts connections
        log.info(
            "unbroken broker on http://%s:%s (engine %s, pid %s)",
            settings.host,
            settings.port,
            settings.engine,
            os.getpid(),
        )

    fd_limit = raise_fd_limit()
    runner = runner_for(
        app,
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        max_connections=connection_cap(settings.max_connections, fd_limit),
        shutdown_timeout=settings.shutdown_timeout,
    )
    try:
        asyncio.run(serve_until_signalled(runner, sock, on_listening=listening))
    except Exception as exc:
        if not engine_unavailable(exc):  # Redis went away between the check and the start
            raise
        print(f"error: {engine_error(settings, exc)}", file=sys.stderr)
        sys.exit(1)


async def _tune_gc(app: web.Application) -> None:
    """Once started: what exists now (modules, app, engine) lives as long as the process, so it
    leaves the collector's view, and collections run less often. With thousands of readers
    the default thresholds meant full collections of 80-270 ms pausing every stream."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 100)


def serve(settings: Settings) -> int:
    try:
        settings.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        check_engine(settings)
        if settings.workers <= 1:
            sock = listen_socket(settings.host, settings.port, reuse_port=False)
        else:
            check_port_free(settings.host, settings.port)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if settings.workers <= 1:
        _run_process(settings, sock)
        return 0
    # Each worker binds its own SO_REUSEPORT socket; the kernel spreads connections over them.
    processes = [
        multiprocessing.get_context("spawn").Process(
            target=_worker_main, args=(settings,), name=f"unbroken-worker-{n}"
        )
        for n in range(settings.workers)
    ]
    for process in processes:
        process.start()

    def stop_workers(signum: int, frame: object) -> None:
        # Each worker drains gracefully on SIGTERM (readers are told to reconnect elsewhere).
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    for process in processes:
        process.join()
    return 0 if all(process.exitcode == 0 for process in processes) else 1


def _worker_main(settings: Settings) -> None:
    try:
        sock = listen_socket(settings.host, settings.port, reuse_port=True)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    _run_process(settings, sock)


def _admin_get(broker: str, path: str, token: str) -> Any:
    try:
        base = broker_url(broker)  # `localhost:8080` means http://localhost:8080
    except ValueError as exc:
        raise SystemExit(f"error: {exc} (--broker or UNBROKEN_URL)") from None
    request = urllib.request.Request(base + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc)["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise SystemExit(f"error: {message}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(
            f"error: cannot reach the broker at {broker} ({exc.reason}); is it running? "
            "Pass --broker or set UNBROKEN_URL."
        ) from None


def _admin_token(args: argparse.Namespace) -> str:
    if args.admin_token or not args.admin_token_file:
        return str(args.admin_token)
    try:
        return read_secret_file(args.admin_token_file, "admin token")
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        try:
            return serve(settings_from_args(args))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "channels":
        listing = _admin_get(args.broker, f"/v1/channels?limit={args.limit}", _admin_token(args))
        for info in listing["channels"]:
            print(
                f"{info['id']}\t{info['state']}\t{info['messages']} messages\t"
                f"last {info['last_event_id']}"
            )
        return 0
    if args.command == "inspect":
        detail = _admin_get(
            args.broker, f"/v1/admin/channels/{args.channel}?tail={args.tail}", _admin_token(args)
        )
        print(json.dumps(detail, indent=2, ensure_ascii=False))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
