"""One call per write, no Channel object: `python one_shot.py '<channel token>' '<another>'`."""

import asyncio
import sys

import worker.channel


async def main(token: str) -> None:
    print(await worker.channel.write(token, {"delta": "Hi"}))  # -> event id
    await worker.channel.end(token, {"done": True})


def failed(token: str) -> None:  # the same, blocking, for synchronous code
    worker.channel.write_sync(token, {"delta": "Hi"})
    try:
        raise TimeoutError("the model did not answer")
    except TimeoutError as exc:
        worker.channel.error_sync(token, exc)  # the app gets an `error` event


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
    failed(sys.argv[2])
