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
from worker.pool import Pool

__all__ = [
    "BadTokenError",
    "Channel",
    "ChannelCancelled",
    "ChannelEndedError",
    "ChannelExpiredError",
    "InvalidMessageError",
    "MessageTooLargeError",
    "Pool",
    "SyncChannel",
    "WorkerError",
    "WriteFailedError",
]
