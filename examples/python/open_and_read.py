import asyncio
import os

from backend import start_backend_job

from client_sdk import open_channel


async def main(broker: str) -> None:
    async with open_channel(broker) as ch:
        job = start_backend_job(ch.token)  # the channel token: the backend writes with it
        async for data in ch:  # message data, each exactly once, in order
            print(data)
        print("final:", ch.end_data)  # the data of the `end` event
        await job


asyncio.run(main(os.environ.get("UNBROKEN_BROKER_URL", "http://localhost:8080")))
