"""The backend library: write to a channel given the token the client passed along."""

from worker.channel import Channel, SyncChannel
from worker.errors import (
    BadTokenError,
    ChannelCancelled,
    ChannelEndedError,
    ChannelExpiredError,
    InvalidMessageError,
    MessageTooLargeError,
    WorkerError,
    WriteFailedError,
)

__all__ = [
    "BadTokenError",
    "Channel",
    "ChannelCancelled",
    "ChannelEndedError",
    "ChannelExpiredError",
    "InvalidMessageError",
    "MessageTooLargeError",
    "SyncChannel",
    "WorkerError",
    "WriteFailedError",
]
