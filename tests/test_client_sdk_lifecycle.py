"""The Python client's channel lifecycle against a real broker over real sockets: cancel (Stop),
rejoining after the process was killed, and the watchdog following the broker's heartbeat."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from client_sdk import (
    BrokerError,
    FileStore,
    InvalidChannelReference,
    MemoryStore,
    ReconnectInfo,
    WatchdogTimeout,
    attach,
    iter_channel_sync,
    open_channel,
    subscribe,
)
from client_sdk.backoff import Backoff
from tests.client_sdk_support import REPO, Proxy, Writer, broker_process

TRANSPORTS = ["sse", "chunked", "ws", "poll"]
BEAT = 1.0  # this module's broker heartbeat: a reader given only a token must learn it


def fast() -> dict[str, Any]:
    return {"backoff": Backoff(initial=0.05, maximum=0.5), "first_byte_timeout": 2.0}


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with broker_process(heartbeat=BEAT) as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def _rejected_write(writer: Writer) -> tuple[int, str]:
    """The status and error code a write gets now (the writer's view of a cancel)."""
    async with writer._session.post(
        f"{writer._base}/messages", json={"messages": [{"late": True}]}, headers=writer._headers
    ) as resp:
        body = await resp.json()
        return resp.status, body.get("error", {}).get("code", "")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_ends_every_reader_and_stops_the_writer(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    async with open_channel(broker, transport=transport, session=session, **fast()) as ch:
        writer = Writer(session, ch.token)
        await writer.messages([{"i": i} for i in range(3)])
        # A second reader on the same channel, holding only the read token.
        other = subscribe(broker, ch.id, token=ch.read_token, session=session, **fast())
        async with other as watcher:
            got: list[Any] = []
            async for data in ch:
                got.append(data)
                if len(got) == 3:
                    answer = await ch.cancel("user pressed stop")
                    assert answer["duplicate"] is False and answer["ids"]
            assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert (ch.state, ch.cancelled, ch.ended) == ("cancelled", True, True)
            assert ch.cancel_reason == "user pressed stop" and ch.end_data is None
            assert ch.last_event_id == answer["last_event_id"]
            seen = [data async for data in watcher]
            assert seen == got and watcher.state == "cancelled"
            assert watcher.cancel_reason == "user pressed stop"
        # The writer's next write is refused: that is how a backend without a lease learns it.
        assert await _rejected_write(writer) == (409, "channel_cancelled")
        # Cancelling again is harmless; the broker says it was a duplicate.
        again = await ch.cancel()
        assert again["duplicate"] is True


async def test_cancel_of_an_ended_channel_and_a_bad_reason(
    broker: str, session: aiohttp.ClientSession
) -> None:
    async with open_channel(broker, session=session) as ch:
        with pytest.raises(BrokerError) as caught:
            await ch.cancel("x" * 201)
        assert (caught.value.status, caught.value.code) == (400, "invalid_reason")
        await Writer(session, ch.token).end({"done": True})
        assert [data async for data in ch] == [] and ch.state == "ended"
        with pytest.raises(BrokerError) as caught:
            await ch.cancel()
        assert (caught.value.status, caught.value.code) == (409, "channel_ended")


async def test_rejoining_after_the_end_reports_cancelled_state_without_events(
    broker: str, session: aiohttp.ClientSession
) -> None:
    async with open_channel(broker, session=session) as ch:
        await Writer(session, ch.token).messages([{"i": 0}])
        await ch.cancel()
        # A reader that never saw the cancelled event gets it from the replay.
        async with attach(broker, ch.id, ch.read_token, session=session) as late:
            assert [data async for data in late] == [{"i": 0}]
            assert late.state == "cancelled" and late.cancel_reason is None


def test_sync_iterator_cancel(broker: str) -> None:
    async def opened() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.post(f"{broker}/v1/channels") as resp:
            info: dict[str, Any] = await resp.json()
            return info

    info = asyncio.run(opened())

    async def write(values: list[Any]) -> None:
        async with aiohttp.ClientSession() as http:
            await Writer(http, info["channel_token"]).messages(values)

    asyncio.run(write([1, 2]))
    with iter_channel_sync(broker, info, **fast()) as messages:
        assert [next(messages), next(messages)] == [1, 2]
        assert messages.cancel("enough")["duplicate"] is False
        assert list(messages) == []
    assert messages.state == "cancelled"


# --- rejoin after a restart --------------------------------------------------------------------

READER_SCRIPT = """
import asyncio, sys
from client_sdk import FileStore, attach, open_channel

async def main(broker, path):
    store = FileStore(path)
    async with open_channel(broker, store=store) as ch:
        print(f"OPENED {ch.info['channel_token']['token']}", flush=True)
        async for data in ch:
            print(f"DATA {data}", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert raw, "the reader process exited early"
    return raw.decode().strip()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_killed_process_rejoins_from_its_store_and_shows_the_rest(
    broker: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "chat" / "channel.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READER_SCRIPT, broker, str(path),
        stdout=subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        token = (await _line(proc)).removeprefix("OPENED ")
        saved = FileStore(path).load()
        assert saved is not None and saved["last_event_id"] is None
        channel_token = {"unbroken": 1, "broker": broker, "channel": saved["channel"]}
        writer = Writer(session, {**channel_token, "token": token})
        ids = await writer.messages([{"i": i} for i in range(5)])
        assert [await _line(proc) for _ in range(5)] == [f"DATA {{'i': {i}}}" for i in range(5)]
        # Once the reader asks for the next message it has handled #4: that is saved.
        await _until(lambda: (FileStore(path).load() or {}).get("last_event_id") == ids[-1])
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    await writer.stream(5, 10, end={"total": 10})

    # "The app restarted": only the store is known.
    async with attach(store=path, session=session, **fast()) as ch:
        rest = [data async for data in ch]
    assert rest == [{"i": i} for i in range(5, 10)]
    assert ch.end_data == {"total": 10}
    assert not path.exists(), "an ended channel is forgotten: nothing to resume"
    with pytest.raises(InvalidChannelReference, match="nothing to attach to"):
        attach(store=path)


async def test_store_keeps_the_position_of_handled_events(
    broker: str, session: aiohttp.ClientSession
) -> None:
    store = MemoryStore()
    async with open_channel(broker, session=session, store=store) as ch:
        ids = await Writer(session, ch.token).messages([{"i": i} for i in range(4)])
        async for data in ch:
            if data == {"i": 2}:
                break  # left while handling #2: #2 was not finished
        assert store.state is not None and store.state["last_event_id"] == ids[1]
        assert store.state["broker"] == [broker] and store.state["channel"] == ch.id
    async with attach(store=store, session=session) as again:
        await Writer(session, ch.token).end(None)
        assert [data async for data in again] == [{"i": 2}, {"i": 3}]
    assert store.state is None


def test_file_store_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"channel": 1}))
    with pytest.raises(ValueError, match="not a saved channel"):
        FileStore(path).load()
    with pytest.raises(TypeError):
        attach(store=object())  # type: ignore[arg-type]


# --- the watchdog follows the broker's heartbeat ------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "chunked", "ws"])
async def test_watchdog_follows_the_heartbeat_the_broker_announces(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    async with open_channel(broker, session=session) as opened:
        writer = Writer(session, opened.token)
        await writer.messages([{"i": 0}])
        proxy = await Proxy(URL(broker).port or 80).start()
        reconnects: list[ReconnectInfo] = []
        try:
            # Only the read token: nothing tells the client the heartbeat but the broker's answer.
            async with subscribe(
                proxy.url, opened.read_token, transport=transport, session=session,
                on_reconnect=reconnects.append, **fast(),
            ) as ch:  # fmt: skip
                assert ch.heartbeat == 15.0  # the default, until the broker says otherwise
                loop = asyncio.get_running_loop()
                stalled_at = 0.0
                async for data in ch:
                    if data == {"i": 0}:
                        assert ch.heartbeat == BEAT
                        proxy.stall()
                        stalled_at = loop.time()
                        await writer.stream(1, 3, end=None)
                        continue
                    break
                detected = reconnects[0]
        finally:
            await proxy.close()
    assert isinstance(detected.error, WatchdogTimeout), detected
    # 2.5 heartbeats of 1 s; the old assumption (15 s) needed 37.5 s.
    assert f"silent for {2.5 * BEAT:g}s" in str(detected.error)
    assert loop.time() - stalled_at < 10 * BEAT
