"""`python -m client_sdk`: tail a channel, or open one.

    python -m client_sdk open http://localhost:8080 --name demo
    python -m client_sdk tail http://localhost:8080 '<read token or channel token JSON>'
    python -m client_sdk tail http://localhost:8080 demo --token <read token> --from 1732500000000-0

Exit codes: 0 the channel ended; 1 it ended with an error event; 2 bad arguments; 3 the broker
refused (token, channel, rate limit: see the message); 4 the broker could not be reached;
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any, Final, TextIO

import aiohttp

from client_sdk.api import create_channel
from client_sdk.channel import Channel, subscribe
from client_sdk.errors import (
    BrokerError,
    ChannelErrorEvent,
    InvalidChannelReference,
    ReconnectsExhausted,
    UnbrokenError,
)
from client_sdk.models import GapInfo, ReconnectInfo
from client_sdk.reader import TRANSPORT_NAMES

EXIT_END: Final = 0
EXIT_CHANNEL_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3
EXIT_UNREACHABLE: Final = 4
EXIT_INTERRUPTED: Final = 130

# What to do next, per broker error code.
HINTS: Final[dict[str, str]] = {
    "token_missing": "pass the read token with --token, or pass a token instead of the id",
    "token_invalid": "the token is not this broker's (another broker, or its secret changed): "
    "get a fresh token from whoever opened the channel",
    "token_expired": "the token expired: open a new channel (python -m client_sdk open ...)",
    "token_wrong_channel": "the token belongs to another channel: check the channel id",
    "token_wrong_scope": "this operation needs the write token (the channel token)",
    "channel_not_found": "check the channel id and the broker URL; the channel may have expired",
    "channel_gone": "the channel expired or was deleted: open a new one",
    "bad_last_event_id": "--from takes an event id such as 1732500000000-0",
    "rate_limited": "the broker limits channel opens per client: wait a little and retry",
    "app_key_required": "this broker only opens channels for apps: pass --app-key",
    "app_key_invalid": "the app key was refused: check --app-key",
    "channel_exists": "a channel with that name exists: pick another --name",
    "invalid_name": "channel names match ^[A-Za-z0-9_.:-]{1,128}$",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client_sdk", description="Unbroken channel client."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    tail = commands.add_parser(
        "tail",
        help="print a channel's messages as they arrive",
        description="Print each message's data as one JSON line until the channel ends. "
        "Reconnects are reported on stderr.",
    )
    tail.add_argument(
        "broker",
        help="broker base URL, e.g. http://localhost:8080 or localhost:8080; several, "
        "comma-separated, to fail over between brokers sharing one Redis",
    )
    tail.add_argument(
        "channel",
        help="channel id (with --token), a read/write token, or a channel token / open "
        "response as JSON",
    )
    tail.add_argument("--token", help="the read token, when CHANNEL is a channel id")
    tail.add_argument("--pretty", action="store_true", help="indented JSON with event ids")
    tail.add_argument(
        "--events", action="store_true", help="print whole events {id, type, data}, end included"
    )
    tail.add_argument("--transport", choices=TRANSPORT_NAMES, default="auto")
    tail.add_argument(
        "--from", dest="last_event_id", metavar="LAST_ID", help="start after this event id"
    )
    tail.add_argument(
        "--heartbeat",
        type=float,
        help="the broker's heartbeat seconds until it announces its own (default 15)",
    )
    tail.add_argument("--idle-timeout", type=float, help="reconnect after this many silent seconds")
    tail.add_argument(
        "--max-retries",
        type=int,
        help="give up after this many failed attempts in a row (default: never)",
    )
    tail.add_argument("-q", "--quiet", action="store_true", help="no reconnect notices")

    opener = commands.add_parser(
        "open", help="open a channel and print its tokens (the broker's open response)"
    )
    opener.add_argument("broker", help="broker base URL, e.g. http://localhost:8080")
    opener.add_argument("--name", help="the channel id to use (default: generated)")
    opener.add_argument("--app-key", help="app key, when the broker's open policy is `key`")
    opener.add_argument("--compact", action="store_true", help="one line of JSON")
    return parser


def _dumps(value: Any, pretty: bool) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2 if pretty else None)


class _Tail:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.channel: Channel | None = None

    def notice(self, text: str) -> None:
        print(f"[tail] {text}", file=self.err, flush=True)

    def on_reconnect(self, info: ReconnectInfo) -> None:
        if self.args.quiet:
            return
        after = info.last_event_id or "the start"
        self.notice(
            f"reconnecting via {info.transport} in {info.delay:.1f}s "
            f"(attempt {info.attempt}): {info.reason}; resuming after {after}"
        )

    def on_gap(self, info: GapInfo) -> None:
        self.notice(
            f"history lost: events after {info.after or 'the start'} and before "
            f"{info.first_id} were dropped by the broker"
        )

    async def run(self) -> int:
        args = self.args
        async with subscribe(
            args.broker,
            args.channel,
            token=args.token,
            transport=args.transport,
            last_event_id=args.last_event_id,
            heartbeat=args.heartbeat,
            idle_timeout=args.idle_timeout,
            max_retries=args.max_retries,
            on_reconnect=self.on_reconnect,
            on_gap=self.on_gap,
        ) as channel:
            self.channel = channel
            async for event in channel.events():
                if args.events:
                    print(_dumps(event.as_dict(), args.pretty), file=self.out, flush=True)
                elif args.pretty:
                    print(f"# {event.id}\n{_dumps(event.data, True)}", file=self.out, flush=True)
                else:
                    print(_dumps(event.data, False), file=self.out, flush=True)
            if channel.cancelled:
                if args.events and channel.last_event_id is not None:
                    data = {"reason": channel.cancel_reason}
                    end = {"id": channel.last_event_id, "type": "cancelled", "data": data}
                    print(_dumps(end, args.pretty), file=self.out, flush=True)
                reason = f": {channel.cancel_reason}" if channel.cancel_reason else ""
                self.notice(f"channel {channel.id} was cancelled{reason}")
                return EXIT_END
            if args.events and channel.last_event_id is not None:
                end = {"id": channel.last_event_id, "type": "end", "data": channel.end_data}
                print(_dumps(end, args.pretty), file=self.out, flush=True)
            end_data = "" if channel.end_data is None else f": {_dumps(channel.end_data, False)}"
            self.notice(f"channel {channel.id} ended{end_data}")
            return EXIT_END


def _explain(exc: BaseException, err: TextIO, resume: str | None) -> int:
    def say(text: str) -> None:
        print(f"error: {text}", file=err, flush=True)

    if isinstance(exc, ChannelErrorEvent):
        say(f"the channel ended with an error{f' [{exc.code}]' if exc.code else ''}: {exc.message}")
        return EXIT_CHANNEL_ERROR
    if isinstance(exc, BrokerError):
        say(f"the broker refused ({exc.status} {exc.code}): {exc.message}")
        if hint := HINTS.get(exc.code):
            print(f"next: {hint}", file=err, flush=True)
        return EXIT_REFUSED
    if isinstance(exc, InvalidChannelReference):
        say(str(exc))
        return EXIT_USAGE
    if isinstance(exc, ReconnectsExhausted) and isinstance(exc.last_error, BrokerError):
        return _explain(exc.last_error, err, resume)
    say(str(exc))
    hint = "check the broker URL and that the broker is running"
    if resume:
        hint += f"; resume with --from {resume}"
    print(f"next: {hint}", file=err, flush=True)
    return EXIT_UNREACHABLE


async def _open(args: argparse.Namespace, out: TextIO) -> int:
    async with aiohttp.ClientSession() as session:
        info = await create_channel(session, args.broker, name=args.name, app_key=args.app_key)
    print(json.dumps(info, ensure_ascii=False, indent=None if args.compact else 2), file=out)
    return EXIT_END


def main(
    argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
    tail = _Tail(args, out, err) if args.command == "tail" else None
    try:
        if tail is not None:
            return asyncio.run(tail.run())
        return asyncio.run(_open(args, out))
    except KeyboardInterrupt:
        resume = tail.channel.last_event_id if tail and tail.channel else None
        print(
            f"interrupted{f'; resume with --from {resume}' if resume else ''}", file=err, flush=True
        )
        return EXIT_INTERRUPTED
    except UnbrokenError as exc:
        resume = tail.channel.last_event_id if tail and tail.channel else None
        return _explain(exc, err, resume)
    except BrokenPipeError:
        # `tail ... | head` closed our stdout: not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain about the pipe again.
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_END
