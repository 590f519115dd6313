import asyncio
import os

from backend import answer

from client_sdk import open_channel_sync, subscribe


async def main(broker: str, read_token: str, channel_token: dict[str, str]) -> None:
    await answer(channel_token)  # the backend already wrote everything
    async with subscribe(broker, read_token) as ch:
        async for event in ch.events():  # whole events: id, type, data
            print(event.type, event.data, "after", ch.last_event_id == event.id)
    print(ch.state, ch.end_data)


broker = os.environ.get("UNBROKEN_BROKER_URL", "http://localhost:8080")
opened = open_channel_sync(broker)  # someone opened the channel and gave us its read token
asyncio.run(main(broker, opened["read_token"], opened["channel_token"]))
