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

TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("tasks", set)


async def stream_reply(token: object, prompt: str) -> None:
    async with Channel.from_token(token) as channel:  # type: ignore[arg-type]
        for word in f"You said: {prompt}. Here is a slow, streamed answer.".split():
            await channel.write({"delta": word + " "})
            await asyncio.sleep(0.05)


async def chat(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        Channel.from_token(body["channel"])  # reject a bad token before answering
    except (KeyError, WorkerError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    task = asyncio.create_task(stream_reply(body["channel"], str(body.get("prompt", ""))))
    request.app[TASKS].add(task)
    task.add_done_callback(request.app[TASKS].discard)
    return web.json_response({"accepted": True}, status=202)


def create_app() -> web.Application:
    app = web.Application()
    app[TASKS] = set()
    app.router.add_post("/chat", chat)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="0.0.0.0", port=int(os.environ.get("PORT", "8090")))
