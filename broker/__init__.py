"""Unbroken broker: channels on Redis Streams (or in memory), relayed to clients."""

__version__ = "0.1.0"
