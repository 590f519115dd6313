"""The words the broker and its clients share: transports, channel states, reconnect reasons.

One definition each, as a `Literal` type and the tuple of its values, so the broker's metrics,
status answers and OpenAPI schema, and the Python client, cannot drift apart. The same lists
are in tests/conformance/vocabulary.json, which the Python and the JS test suites both check.
This module imports nothing from the broker: the client imports it without the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

# How a reader is connected, named by the route it reads: /events, /stream, /ws, /poll. These
# are the names in metrics, in the status answer and in both clients' `transport`. (A client's
# way of making the request, fetch / EventSource / uni.request, is a separate notion.)
Transport = Literal["sse", "chunked", "ws", "poll"]
TRANSPORTS: Final[tuple[Transport, ...]] = get_args(Transport)

# The route segment of each reader transport.
TRANSPORT_OF_ENDPOINT: Final[Mapping[str, Transport]] = {
    "events": "sse",
    "stream": "chunked",
    "ws": "ws",
    "poll": "poll",
}

# A channel is `open` until a terminal event: `end` or `error` make it `ended`, `cancelled`
# (a reader pressed Stop) makes it `cancelled`.
ChannelState = Literal["open", "ended", "cancelled"]
CHANNEL_STATES: Final[tuple[ChannelState, ...]] = get_args(ChannelState)


def channel_state(value: str) -> ChannelState:
    """`value` (a stored state, e.g. Redis meta) as a ChannelState; ValueError when unknown."""
    for state in CHANNEL_STATES:
        if value == state:
            return state
    raise ValueError(f"unknown channel state {value!r} (expected one of {CHANNEL_STATES})")


TerminalEventType = Literal["end", "error", "cancelled"]
TERMINAL_EVENT_TYPES: Final[tuple[TerminalEventType, ...]] = get_args(TerminalEventType)

# Why the broker closes a reader's stream while the channel stays readable (the `reconnect`
# event's `reason`; the reader resumes from its last id):
# - shutdown: this broker is stopping (WebSocket close 1012);
# - slow_consumer: the reader did not drain its socket (close 1013);
# - max_duration: the stream reached the `max_duration` it asked for;
# - gone: the channel expired or was deleted (the next request answers 410);
# - client_closed: the reader went away (never sent, it is the hub's own bookkeeping).
ReconnectReason = Literal["shutdown", "slow_consumer", "max_duration", "gone", "client_closed"]
RECONNECT_REASONS: Final[tuple[ReconnectReason, ...]] = get_args(ReconnectReason)
