"""A producer that does not wait for each write: its tokens go out in few requests.

UNBROKEN_BROKER_URL=http://localhost:8080 python queued_writes.py '<channel token JSON>'
"""

import asyncio
import sys
from collections.abc import AsyncIterator

from worker import Channel


async def llm_stream() -> AsyncIterator[str]:  # stands for a fast model: a token every 2 ms
    for n in range(100):
        yield f"t{n} "
        await asyncio.sleep(0.002)


async def main(token: str) -> None:
    async with Channel.from_token(token) as ch:
        async for delta in llm_stream():
            ch.write_nowait({"delta": delta})  # returns at once: a future of the event id
    # leaving the block sends what is queued, then the end


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
