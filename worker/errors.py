"""Typed failures of a channel write. Each message says what to do next."""

from __future__ import annotations


class WorkerError(Exception):
    """Base class. `code` is the broker's error code when it sent one."""

    code = "worker_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadTokenError(WorkerError):
    code = "token_invalid"


class ChannelEndedError(WorkerError):
    code = "channel_ended"


class ChannelExpiredError(WorkerError):
    code = "channel_gone"


class MessageTooLargeError(WorkerError):
    code = "message_too_large"


class InvalidMessageError(WorkerError):
    code = "invalid_body"


class WriteFailedError(WorkerError):
    """The broker or Redis stayed unreachable through every retry."""

    code = "write_failed"


class ChannelCancelled(ChannelEndedError):
    """The reader cancelled the channel ("stop generation"): stop producing, nothing more can be
    written. An `async with Channel...` block that ends with it exits cleanly."""

    code = "channel_cancelled"
