"""Unbroken's Python client: open a channel, hand its token to a backend, read its messages.

    async with open_channel("http://localhost:8080") as ch:
        start_backend_job(ch.token)          # the channel token: the backend writes with it
        async for data in ch:                # every message exactly once, in order
            print(data)
        print("final:", ch.end_data)

`subscribe()` reads an existing channel, `attach()` rejoins one after a restart (`store=`),
`channel.cancel()` stops its producer; `iter_channel_sync()` reads in plain scripts.
"""

import logging

from client_sdk.api import cancel_channel, create_channel
from client_sdk.backoff import Backoff
from client_sdk.channel import Channel, ChannelContext, attach, open_channel, subscribe
from client_sdk.errors import (
    BrokerError,
    ChannelErrorEvent,
    InvalidChannelReference,
    ProtocolViolation,
    ReconnectsExhausted,
    TransportError,
    UnbrokenError,
    WatchdogTimeout,
)
from client_sdk.ids import is_after, parse_event_id
from client_sdk.models import Event, GapInfo, ReconnectInfo
from client_sdk.store import ChannelStore, FileStore, MemoryStore, SavedChannel
from client_sdk.sync import SyncChannelIterator, iter_channel_sync, open_channel_sync

__version__ = "0.1.0"

# A library logs, the application decides where logs go (and the CLI reports on its own).
logging.getLogger("client_sdk").addHandler(logging.NullHandler())

__all__ = [
    "Backoff",
    "BrokerError",
    "Channel",
    "ChannelContext",
    "ChannelErrorEvent",
    "ChannelStore",
    "Event",
    "FileStore",
    "GapInfo",
    "InvalidChannelReference",
    "MemoryStore",
    "ProtocolViolation",
    "ReconnectInfo",
    "ReconnectsExhausted",
    "SavedChannel",
    "SyncChannelIterator",
    "TransportError",
    "UnbrokenError",
    "WatchdogTimeout",
    "attach",
    "cancel_channel",
    "create_channel",
    "is_after",
    "iter_channel_sync",
    "open_channel",
    "open_channel_sync",
    "parse_event_id",
    "subscribe",
]
