import asyncio
import os

from backend import start_backend_job

from client_sdk import open_channel


async def main(broker: str) -> None:
    async with open_channel(broker) as ch:
        job = start_backend_job(ch.token, words=1000, pause=0.01)
        async for data in ch:
            print(data)
            if data == {"delta": "word2 "}:  # the user pressed Stop
                await ch.cancel("user pressed stop")  # iteration then ends
        await job  # the backend's block ended quietly at its next write
    print(ch.state, ch.cancel_reason)


asyncio.run(main(os.environ.get("UNBROKEN_BROKER_URL", "http://localhost:8080")))
