"""Raw readers (no SDK: nothing dedupes or reorders for them) and the idempotent writer.

Every message carries its writer's sequence number, so a reader can tell lost, duplicated and
reordered messages apart by payload as well as by event id.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from broker.events import parse_event_id

SILENCE = 3.0  # seconds without a byte (heartbeats every 0.5 s) before a reader gives up a link
TERMINAL = ("end", "error", "cancelled")
PATHS = {"sse": "events", "chunked": "stream", "ws": "ws", "poll": "poll"}
RETRYABLE = {502, 503, 504}


class Unexpected(Exception):
    """An answer no fault explains (a 4xx or 5xx other than 'try again'): a bug."""


@dataclass
class Tally:
    """What the readers of one transport got, summed."""

    readers: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    reconnects: int = 0
    unfinished: int = 0  # readers that never saw the end event
    unexpected: list[str] = field(default_factory=list)

    def add(self, reader: Reader) -> None:
        self.readers += 1
        self.expected += reader.total
        self.received += len(reader.seqs)
        self.lost += reader.total - len(reader.seqs)
        self.duplicated += reader.duplicated
        self.reordered += reader.reordered
        self.reconnects += reader.reconnects
        self.unfinished += 0 if reader.ended else 1
        self.unexpected.extend(reader.unexpected)
        if reader.total != len(reader.seqs):
            self.unexpected.extend(reader.skips or [f"{reader.transport}: lost the tail"])
            if reader.told_ended is not None:
                self.unexpected.append(reader.told_ended)


class Reader:
    """Reads one channel over one transport until its end event, resuming from the last id on
    every failure, through the brokers in turn."""

    def __init__(
        self, transport: str, channel: dict[str, Any], bases: list[str], total: int
    ) -> None:
        self.transport = transport
        self.channel_id: str = channel["id"]
        self.token: str = channel["read_token"]
        self.bases = bases
        self.total = total
        self.last_id: str | None = None
        self.last_key: tuple[int, int] | None = None
        self.ids: set[str] = set()
        self.seqs: set[int] = set()
        self.max_seq = 0
        self.duplicated = 0
        self.reordered = 0
        self.reconnects = 0
        self.ended = False
        self.pause = 0.0  # set by the fault injector: stop reading for this long
        self.unexpected: list[str] = []
        self.skips: list[str] = []  # where a seq jumped ahead: what a loss looked like
        self.connected_at = 0.0
        self.base = ""
        # Set when the broker said "ended, nothing after your id" (SSE/chunked 204, poll
        # `ended: true` with no events, WebSocket close 1000 at connect) instead of the reader
        # seeing the terminal event: `ended` is then the broker's word, and a reader that lacks
        # messages was told a false end (a lost tail), which a seq jump alone would not show.
        self.told_ended: str | None = None

    def record(self, event_id: str, kind: str, data: Any) -> None:
        """Count each event at most once: as a duplicate (its id, or its payload's seq, seen
        before), as reordered (an id or a seq below one already seen), or as good."""
        key = parse_event_id(event_id)
        if event_id in self.ids:
            self.duplicated += 1
            return
        self.ids.add(event_id)
        out_of_order = self.last_key is not None and key < self.last_key
        if not out_of_order:
            self.last_id, self.last_key = event_id, key
        if kind == "message":
            seq = int(data["seq"])
            if seq in self.seqs:
                self.duplicated += 1
                return
            out_of_order = out_of_order or seq < self.max_seq
            if seq > self.max_seq + 1:
                now = time.monotonic()
                self.skips.append(
                    f"{self.transport} {self.channel_id}: seq {self.max_seq} -> {seq} (id "
                    f"{event_id}) at {now:.2f}, {now - self.connected_at:.2f} s after "
                    f"(re)connecting to {self.base}"
                )
            self.seqs.add(seq)
            self.max_seq = max(self.max_seq, seq)
        elif kind in TERMINAL:
            self.ended = True
            if kind != "end":
                self.unexpected.append(f"{self.transport}: terminal {kind} {data}")
        if out_of_order:
            self.reordered += 1

    async def run(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        attempt = rng.randrange(len(self.bases))
        while not self.ended:
            base = self.bases[attempt % len(self.bases)]
            try:
                if await self._once(session, base):
                    continue  # a poll answered normally: not a reconnect
            except Unexpected as exc:
                self.unexpected.append(f"{self.transport}: {exc}")
                if len(self.unexpected) > 20:
                    return
            except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError, KeyError):
                pass
            if self.ended:
                return
            self.reconnects += 1
            attempt += 1
            await asyncio.sleep(rng.uniform(0.02, 0.1))

    def _url(self, base: str) -> tuple[str, dict[str, str]]:
        params = {"token": self.token}
        if self.last_id is not None:
            params["last_event_id"] = self.last_id
        url = f"{base}/v1/channels/{self.channel_id}/{PATHS[self.transport]}"
        if self.transport == "ws":
            url = "ws" + url[4:]
        return url, params

    async def _paused(self) -> None:
        if self.pause:
            pause, self.pause = self.pause, 0.0
            await asyncio.sleep(pause)

    async def _once(self, session: aiohttp.ClientSession, base: str) -> bool:
        self.connected_at, self.base = time.monotonic(), base
        if self.transport == "ws":
            await self._ws(session, base)
            return False
        if self.transport == "poll":
            return await self._poll(session, base)
        await self._sse(session, base)
        return False

    def _told_ended(self, how: str) -> None:
        """The broker said the channel ended and nothing follows our last id."""
        self.ended = self.last_id is not None
        if self.ended:
            self.told_ended = (
                f"{self.transport} {self.channel_id}: told ended ({how}) after id {self.last_id}"
                f" at seq {self.max_seq} ({len(self.seqs)} messages), by {self.base}"
            )

    def _status(self, status: int, text: str) -> None:
        if status not in RETRYABLE:
            raise Unexpected(f"HTTP {status}: {text[:200]}")

    async def _sse(self, session: aiohttp.ClientSession, base: str) -> None:
        url, params = self._url(base)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=SILENCE)
        async with session.get(url, params=params, timeout=timeout) as response:
            if response.status == 204:  # resumed after the end: nothing left
                self._told_ended("HTTP 204")
                return
            if response.status != 200:
                self._status(response.status, await response.text())
                return
            fields: dict[str, str] = {}
            async for raw in response.content:
                await self._paused()
                if not raw.endswith(b"\n"):
                    return  # a line cut by the end of the connection: never a whole event
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
                    continue
                if "id" in fields and "event" in fields:
                    self.record(fields["id"], fields["event"], json.loads(fields["data"]))
                    if self.ended:
                        return
                elif fields.get("event") == "gap":  # events were dropped: say so, read on
                    self.unexpected.append(f"{self.transport}: gap {fields.get('data')}")
                fields = {}

    async def _ws(self, session: aiohttp.ClientSession, base: str) -> None:
        url, params = self._url(base)
        async with session.ws_connect(
            url,
            params=params,
            timeout=aiohttp.ClientWSTimeout(ws_receive=SILENCE, ws_close=2),
            autoping=True,
        ) as socket:
            async for frame in socket:
                await self._paused()
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                message = json.loads(frame.data)
                if "id" in message:
                    self.record(message["id"], message["type"], message["data"])
                elif message["type"] == "gap":  # events were dropped: say so, read on
                    self.unexpected.append(f"{self.transport}: gap {message}")
                elif message["type"] == "rejected":
                    code = message["error"]["code"]
                    if code not in ("shutting_down", "engine_unavailable"):
                        raise Unexpected(f"ws rejected: {message}")
            if socket.close_code == 1000 and not self.ended:
                # Closed as ended right at connect: the end event came before our position.
                self._told_ended("close 1000")
            elif socket.close_code is not None and socket.close_code >= 4000:
                if socket.close_code - 4000 not in RETRYABLE:
                    raise Unexpected(f"ws close {socket.close_code}")

    async def _poll(self, session: aiohttp.ClientSession, base: str) -> bool:
        url, params = self._url(base)
        params["timeout"] = "1"
        timeout = aiohttp.ClientTimeout(total=SILENCE + 1)
        async with session.get(url, params=params, timeout=timeout) as response:
            await self._paused()
            if response.status != 200:
                self._status(response.status, await response.text())
                return False
            body = await response.json()
        for event in body["events"]:
            self.record(event["id"], event["type"], event["data"])
        if body["gap"]:
            raise Unexpected(f"gap {body['gap']}")
        if body["ended"] and not self.ended:
            self._told_ended("ended: true")
        return True


async def write_channel(
    session: aiohttp.ClientSession,
    bases: list[str],
    channel: dict[str, Any],
    total: int,
    pad: int,
    interval: float,
    rng: random.Random,
    unexpected: list[str],
) -> int:
    """Write `total` messages then end, each retried (same writer/seq: the broker dedupes) until
    acknowledged; returns how many attempts failed and were retried."""
    headers = {"Authorization": f"Bearer {channel['channel_token']['token']}"}
    retries = 0
    for seq in range(1, total + 2):
        path = "messages" if seq <= total else "end"
        body = {"writer": "chaos", "seq": seq, "data": {"seq": seq, "pad": "x" * pad}}
        attempt = rng.randrange(len(bases))
        while True:
            url = f"{bases[attempt % len(bases)]}/v1/channels/{channel['id']}/{path}"
            try:
                async with session.post(
                    url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status in (200, 201):
                        break
                    if response.status not in RETRYABLE:
                        unexpected.append(f"write {path} {seq}: {await response.text()}")
                        if response.status < 500:
                            return retries
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass
            retries += 1
            attempt += 1
            await asyncio.sleep(rng.uniform(0.02, 0.1))
        await asyncio.sleep(interval)
    return retries
