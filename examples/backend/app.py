"""An example backend: receives a channel token from the app and streams fake LLM tokens into it.

    POST /chat {"channel": <the channel token the app passed>, "prompt": "hello"}

It answers at once (as a cloud function would) and keeps writing in the background, through
Redis when UNBROKEN_REDIS_URL is set (with UNBROKEN_SECRET, the broker's key ring, to verify the
token), otherwise through the broker's HTTP write API at UNBROKEN_BROKER_URL (the only brokers
this backend will talk to). A "stop" from the app ends the loop quietly (ChannelCancelled).
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from worker.channel import Channel
from worker.errors import WorkerError
from worker.pool import Pool

TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("tasks", set)
POOL: web.AppKey[Pool] = web.AppKey("pool", Pool)


async def stream_reply(channel: Channel, prompt: str) -> None:
    # Leaving the block ends the channel; a Stop from the app ends it quietly (ChannelCancelled).
    async with channel:
        for word in f"You said: {prompt}. Here is a slow, streamed answer.".split():
            await channel.write({"delta": word + " "})
            await asyncio.sleep(0.05)


async def chat(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        # Verify the token before answering; every channel shares the app's connections.
        channel = Channel.from_token(body["channel"], pool=request.app[POOL])
    except (KeyError, WorkerError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    task = asyncio.create_task(stream_reply(channel, str(body.get("prompt", ""))))
    request.app[TASKS].add(task)
    task.add_done_callback(request.app[TASKS].discard)
    return web.json_response({"accepted": True}, status=202)


async def close_pool(app: web.Application) -> None:
    await app[POOL].close()


def create_app() -> web.Application:
    app = web.Application()
    app[TASKS] = set()
    app[POOL] = Pool()
    app.router.add_post("/chat", chat)
    app.on_cleanup.append(close_pool)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="0.0.0.0", port=int(os.environ.get("PORT", "8090")))
