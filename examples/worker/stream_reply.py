"""A backend streaming a model's answer into the channel the app opened.

UNBROKEN_BROKER_URL=http://localhost:8080 python stream_reply.py '<channel token JSON>' hello
"""

import asyncio
import sys
from collections.abc import AsyncIterator

from worker import Channel


async def llm_stream(prompt: str) -> AsyncIterator[str]:  # stands for your model's API
    for word in f"You asked: {prompt}. Here is a long answer, one word at a time.".split():
        yield word + " "
        await asyncio.sleep(0.05)


async def main(token: str, prompt: str) -> None:
    async with Channel.from_token(token) as ch:  # ends the channel when the block ends
        async for delta in llm_stream(prompt):
            await ch.write({"delta": delta})  # raises ChannelCancelled after "stop"
    # an exception in the block is reported to the app as an `error` event;
    # a cancel by the app ends the block quietly (ChannelCancelled is suppressed)
    print("stopped by the app" if ch.cancelled else "answered")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
