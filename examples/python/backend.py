"""The stand-in backend the client examples hand their channel token to (a real one would be a
cloud function or a worker process that received the token)."""

import asyncio
from typing import Any

from worker.channel import Channel


async def answer(token: Any, words: int = 3, pause: float = 0.0) -> None:
    async with Channel.from_token(token) as ch:
        for i in range(words):
            await ch.write({"delta": f"word{i} "})
            await asyncio.sleep(pause)
        await ch.end({"words": words})


def start_backend_job(token: Any, **options: Any) -> asyncio.Task[None]:
    return asyncio.create_task(answer(token, **options))


if __name__ == "__main__":  # python backend.py '<channel token JSON>' [words] [pause]
    import sys

    words = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    asyncio.run(answer(sys.argv[1], words, pause))
