import os

import worker.channel
from client_sdk import iter_channel_sync, open_channel_sync

broker = os.environ.get("UNBROKEN_BROKER_URL", "http://localhost:8080")
info = open_channel_sync(broker)  # the open response
worker.channel.write_sync(info["channel_token"], {"delta": "hello"})  # what a backend does
worker.channel.end_sync(info["channel_token"], {"words": 1})
with iter_channel_sync(broker, info) as messages:
    for data in messages:
        print(data)
print(messages.end_data)
