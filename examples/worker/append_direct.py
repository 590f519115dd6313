"""Append to a channel straight in Redis, as the worker library does (no broker involved).

UNBROKEN_REDIS_URL=redis://localhost:6379/0 python append_direct.py <channel id>
"""

import asyncio
import os
import sys

from redis.asyncio import Redis

from broker.engine.redis_layout import append_events, heartbeat
from broker.events import pack

URL = os.environ.get("UNBROKEN_REDIS_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("UNBROKEN_REDIS_PREFIX", "unbroken")  # the broker's --redis-prefix


async def main(channel_id: str) -> None:
    redis = Redis.from_url(URL)  # decode_responses must stay False
    try:
        result = await append_events(
            redis, PREFIX, channel_id, [("message", pack({"a": 1}))], writer="job-42", seq=1
        )
        print(result)  # AppendResult(ids=[...], duplicate=False, last_event_id=...)
        # raises ChannelNotFound, ChannelEnded, ChannelCancelled (broker.engine.base: a reader
        # pressed Stop; a subclass of ChannelEnded), ValueError for a bad batch

        # nothing to write for a while: keep the writer lease (call every writer_timeout / 3)
        await heartbeat(redis, PREFIX, channel_id)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
