"""Run it, kill it while it prints (Ctrl-C), run it again: the second run shows the rest."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from client_sdk import FileStore, attach, open_channel

BACKEND = Path(__file__).with_name("backend.py")


def start_backend(token: Any) -> None:
    # A process of its own, as a real backend is: it goes on writing while we are gone.
    command = [sys.executable, str(BACKEND), json.dumps(token), "40", "0.05"]
    subprocess.Popen(command, start_new_session=True)


async def main(broker: str, path: str) -> None:
    store = FileStore(path)
    if store.load() is None:
        channel = open_channel(broker, store=store)  # a new generation
        async with channel as ch:
            start_backend(ch.token)
            async for data in ch:
                print(data, flush=True)
    else:
        async with attach(store=store) as ch:  # the process restarted: show the rest
            async for data in ch:
                print(data, flush=True)
    print("final:", ch.end_data)


asyncio.run(main(os.environ.get("UNBROKEN_BROKER_URL", "http://localhost:8080"), sys.argv[1]))
