"""An incremental parser for `text/event-stream` (the WHATWG event stream format).

Bytes arrive in arbitrary chunks: a line, or a UTF-8 character, may be split across two.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEMessage:
    event: str  # "message" when the block has no `event:` field
    data: str
    id: str | None  # the `id:` field of this block only (None when it has none)
    retry: int | None = None


class SSEParser:
    """Feed bytes, get complete messages. Comments (`: hb`) and blank blocks yield nothing."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._pending_cr = False
        self._started = False
        self._reset_block()
        self.retry: int | None = None

    def _reset_block(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._pending_cr:
            # A CR ended the previous chunk: a following LF belongs to that line ending.
            if text.startswith("\n"):
                text = text[1:]
            self._pending_cr = False
        self._buffer += text
        out: list[SSEMessage] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            end, width = cut
            line = self._buffer[:end]
            if width == 1 and self._buffer[end] == "\r" and end + 1 == len(self._buffer):
                self._pending_cr = True
            self._buffer = self._buffer[end + width :]
            message = self._line(line)
            if message is not None:
                out.append(message)
        return out

    def _line(self, line: str) -> SSEMessage | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_fields = True
        elif name == "event":
            self._event = value
            self._has_fields = True
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self._has_fields = True
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
                self.retry = self._retry
                self._has_fields = True
        return None

    def _dispatch(self) -> SSEMessage | None:
        if not self._data:
            # Per the standard a block without data dispatches nothing (a bare `retry:` block).
            self._reset_block()
            return None
        message = SSEMessage(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._id,
            retry=self._retry,
        )
        self._reset_block()
        return message


def _line_end(buffer: str) -> tuple[int, int] | None:
    """Index and width of the first line terminator (CRLF, LF or CR)."""
    lf = buffer.find("\n")
    cr = buffer.find("\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, 1
    if cr + 1 < len(buffer) and buffer[cr + 1] == "\n":
        return cr, 2
    return cr, 1
