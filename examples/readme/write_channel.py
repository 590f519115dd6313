"""A backend: the app handed it a channel token; it writes two messages and ends the channel.

UNBROKEN_BROKER_URL=http://localhost:8080 python write_channel.py '<channel token JSON>'
"""

import asyncio
import sys

from worker.channel import Channel


async def main(token: str) -> None:
    # The channel token: a dict, its JSON text, or the bare JWT. UNBROKEN_BROKER_URL names the
    # brokers this backend may write to. The block ends the channel when it finishes (or
    # reports an `error` event if it raises) and closes its connection.
    async with Channel.from_token(token) as ch:
        await ch.write({"a": 1})
        await ch.write({"a": 2})
        await ch.end({"a": 5})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
