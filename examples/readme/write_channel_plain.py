"""The same backend without `async with`: then close the channel yourself."""

import asyncio
import sys

from worker.channel import Channel


async def main(token: str) -> None:
    ch = Channel.from_token(token)
    try:
        await ch.write({"a": 1})
        await ch.write({"a": 2})
        await ch.end({"a": 5})
    finally:
        await ch.close()  # its HTTP session or Redis connection


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
