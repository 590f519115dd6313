"""Typed errors of the client. Every error the SDK raises is an `UnbrokenError`.

- `BrokerError`: the broker answered with `{"error": {"code", "message"}}` (or a WebSocket
  `rejected` frame). `retriable` tells whether trying again can succeed.
- `ChannelErrorEvent`: the writer ended the channel with an `error` event.
- `TransportError`: the connection failed (refused, reset, silent, malformed); the reader
  reconnects on these and raises one only when it gives up.
"""

from __future__ import annotations

from typing import Any

# 408 and 429 ask the client to come back later; 5xx are the broker's (or a proxy's) trouble.
# The JS SDK decides the same (tests/conformance/status.json).
_RETRIABLE_4XX = frozenset({408, 429})


class UnbrokenError(Exception):
    """Base of every error raised by `client_sdk`."""


class BrokerError(UnbrokenError):
    """An error answer of the broker, e.g. 401 `token_expired` or 410 `channel_gone`.

    `code` is the broker's code, or `http_error` when the answer had no JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def retriable(self) -> bool:
        return self.status >= 500 or self.status in _RETRIABLE_4XX


class ChannelErrorEvent(UnbrokenError):
    """The channel ended with an `error` event; `data` is what the writer reported."""

    def __init__(self, data: Any, event_id: str | None = None) -> None:
        self.data = data
        self.event_id = event_id
        message: str | None = None
        code: str | None = None
        if isinstance(data, dict):
            raw_message = data.get("message")
            raw_code = data.get("code")
            message = raw_message if isinstance(raw_message, str) else None
            code = raw_code if isinstance(raw_code, str) else None
        self.message = message if message is not None else repr(data)
        self.code = code
        super().__init__(f"channel error{f' [{code}]' if code else ''}: {self.message}")


class TransportError(UnbrokenError):
    """A connection-level failure: the reader reconnects (and may switch transport)."""

    def __init__(
        self, message: str, *, before_first_byte: bool = False, unreachable: bool = False
    ) -> None:
        super().__init__(message)
        # True when the transport never delivered anything: `transport="auto"` then tries the
        # next transport instead of insisting on one that a proxy may be blocking.
        self.before_first_byte = before_first_byte or unreachable
        # True when nothing accepted the connection (refused, unknown host): with several
        # broker URLs the reader fails over to the next one.
        self.unreachable = unreachable


class WatchdogTimeout(TransportError):
    """Nothing (not even a heartbeat) arrived for the idle timeout: the connection is dead."""


class ProtocolViolation(TransportError):
    """The broker (or something in between) sent what the protocol does not allow."""


class ReconnectsExhausted(UnbrokenError):
    """`max_retries` consecutive attempts failed; `last_error` is the last failure."""

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        super().__init__(f"gave up after {attempts} failed attempts: {last_error}")
        self.attempts = attempts
        self.last_error = last_error


class InvalidChannelReference(UnbrokenError, ValueError):
    """The channel id / token / channel token given to `subscribe` cannot be understood."""
