"""The event model and its wire encodings.

An event is stored msgpack-encoded; every transport sends JSON. The conversion and each wire
encoding happen at most once per event, however many subscribers receive it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Literal

import msgpack

from broker.vocabulary import TERMINAL_EVENT_TYPES

# `cancelled` is appended only by a cancel (a reader pressed Stop), never by a writer.
EventType = Literal["message", "end", "error", "cancelled"]
TERMINAL_TYPES: Final = frozenset(TERMINAL_EVENT_TYPES)

# ASCII digits only (`\d` also matches other scripts' digits), anchored with `\Z` (`$` also
# matches before a final "\n"), each part a Redis stream id half: an unsigned 64-bit integer.
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})\Z")
_U64_MAX: Final = 2**64 - 1


def ws_text_frame(text: str) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (RFC 6455 section 5.2).

    Here rather than in broker/transports/framing.py, which imports this module: Event.ws_frame
    and the framers' own frames (heartbeat) share it."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


def parse_event_id(value: str) -> tuple[int, int]:
    """Split a `<ms>-<seq>` id into a sortable tuple; ValueError when malformed.

    The largest id (both halves 2^64-1) is refused too: nothing can come after it, and Redis
    refuses it as an exclusive range start.
    """
    match = _EVENT_ID.match(value)
    if match is None:
        raise ValueError(f"not an event id: {value!r}")
    key = int(match.group(1)), int(match.group(2))
    if key[0] > _U64_MAX or key[1] > _U64_MAX or key == (_U64_MAX, _U64_MAX):
        raise ValueError(f"event id out of range: {value!r}")
    return key


def id_before(event_id: str) -> str:
    """The greatest possible id below `event_id`: reading after it starts at `event_id`."""
    ms, seq = parse_event_id(event_id)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**64 - 1}"


def pack(value: Any) -> bytes:
    """Encode a JSON value for storage. Raises ValueError for values msgpack cannot hold."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (OverflowError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


def unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Event:
    """One stored event, with lazily built and cached wire encodings."""

    __slots__ = (
        "_data_json",
        "_sse",
        "_sse_chunk",
        "_ws",
        "_ws_frame",
        "id",
        "key",
        "payload",
        "type",
    )

    def __init__(self, id: str, type: EventType, payload: bytes) -> None:
        self.id = id
        self.type: EventType = type
        self.payload = payload  # msgpack bytes as stored
        self.key = parse_event_id(id)
        self._data_json: str | None = None
        self._sse: bytes | None = None
        self._ws: str | None = None
        self._sse_chunk: bytes | None = None
        self._ws_frame: bytes | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    @property
    def data(self) -> Any:
        return unpack(self.payload)

    @property
    def data_json(self) -> str:
        if self._data_json is None:
            self._data_json = dumps(self.data)
        return self._data_json

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = f"id: {self.id}\nevent: {self.type}\ndata: {self.data_json}\n\n".encode()
        return self._sse

    @property
    def ws(self) -> str:
        if self._ws is None:
            self._ws = f'{{"type":"{self.type}","id":"{self.id}","data":{self.data_json}}}'
        return self._ws

    @property
    def sse_chunk(self) -> bytes:
        """The SSE frame as one HTTP/1.1 chunk, for writing straight to a chunked response."""
        if self._sse_chunk is None:
            sse = self.sse
            self._sse_chunk = b"%x\r\n%b\r\n" % (len(sse), sse)
        return self._sse_chunk

    @property
    def ws_frame(self) -> bytes:
        """The `ws` text as one unmasked, uncompressed WebSocket frame (RFC 6455 §5.2)."""
        if self._ws_frame is None:
            self._ws_frame = ws_text_frame(self.ws)
        return self._ws_frame

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": self.data}

    def __repr__(self) -> str:
        return f"Event({self.id!r}, {self.type!r})"
