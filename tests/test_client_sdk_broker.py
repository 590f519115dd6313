"""The Python client against a real broker (a subprocess) over real sockets: every transport,
resume after a cut, the watchdog, typed errors, transport fallback, the blocking iterator."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from client_sdk import (
    BrokerError,
    Channel,
    ChannelErrorEvent,
    Event,
    GapInfo,
    ReconnectInfo,
    WatchdogTimeout,
    iter_channel_sync,
    open_channel,
    open_channel_sync,
    subscribe,
)
from client_sdk.backoff import Backoff
from client_sdk.ids import is_after
from tests.client_sdk_support import Proxy, Writer, broker_process, write_sync

TRANSPORTS = ["sse", "ws", "poll", "chunked"]


def fast() -> dict[str, Any]:
    """Quick reconnects for tests (a fresh backoff each time: it holds the attempt count)."""
    return {"backoff": Backoff(initial=0.05, maximum=0.5), "first_byte_timeout": 2.0}


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with broker_process() as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def proxy(broker: str) -> AsyncIterator[Proxy]:
    proxy = await Proxy(URL(broker).port or 80).start()
    yield proxy
    await proxy.close()


async def read_all(channel: Channel, on_event: Any = None) -> list[Event]:
    events: list[Event] = []
    async for event in channel.events():
        events.append(event)
        if on_event is not None:
            await on_event(len(events))
    return events


async def waiting_reader(
    session: aiohttp.ClientSession, broker: str, channel: Channel, transport: str
) -> None:
    """Until the broker counts a reader of `transport` on the channel (a long-poll is counted
    only while the broker holds it)."""
    url = f"{broker}/v1/channels/{channel.id}"
    headers = {"Authorization": f"Bearer {channel.read_token}"}
    async with asyncio.timeout(10):
        while True:
            async with session.get(url, headers=headers) as resp:
                if (await resp.json())["subscribers"][transport] >= 1:
                    return
            await asyncio.sleep(0.02)


def assert_exactly_once(events: list[Event], count: int) -> None:
    assert [e.data for e in events] == [{"i": i} for i in range(count)]
    assert all(is_after(b.id, a.id) for a, b in itertools.pairwise(events))


@pytest.mark.parametrize("transport", [*TRANSPORTS, "auto"])
async def test_reads_300_messages_and_end_exactly_once(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    async with open_channel(broker, transport=transport, session=session, **fast()) as ch:
        assert ch.token["channel"] == ch.id and ch.token["unbroken"] == 1
        assert ch.read_token and ch.info["read_token"] == ch.read_token
        writer = Writer(session, ch.token)
        # Half the messages are stored before the reader connects (replay), half arrive live.
        await writer.messages([{"i": i} for i in range(150)])
        write = asyncio.create_task(writer.stream(150, 300, end={"total": 300}))
        events = await asyncio.wait_for(read_all(ch), 30)
        await write
        assert_exactly_once(events, 300)
        assert ch.ended and ch.end_data == {"total": 300}
        assert ch.reconnects == 0
        # Iterating again after the end yields nothing more.
        assert [data async for data in ch] == []


async def test_async_for_yields_data_and_named_channel(
    broker: str, session: aiohttp.ClientSession
) -> None:
    name = f"py-client-{id(session)}"
    async with open_channel(broker, name=name, session=session) as ch:
        assert ch.id == name
        await Writer(session, ch.token).stream(0, 3, end=None)
        assert [data async for data in ch] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert ch.end_data is None
    with pytest.raises(BrokerError) as caught:
        async with open_channel(broker, name=name, session=session):
            pass
    assert (caught.value.status, caught.value.code) == (409, "channel_exists")
    with pytest.raises(BrokerError) as caught:
        await open_channel(broker, name="bad name!", session=session)
    assert caught.value.code == "invalid_name"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_after_connection_cut(
    broker: str, session: aiohttp.ClientSession, proxy: Proxy, transport: str
) -> None:
    reconnects: list[ReconnectInfo] = []
    async with open_channel(broker, session=session) as opened:
        writer = Writer(session, opened.token)
        async with subscribe(
            proxy.url, opened.info, transport=transport, session=session,
            on_reconnect=reconnects.append, **fast(),
        ) as ch:  # fmt: skip
            phases: list[asyncio.Task[None]] = []

            async def next_phase(n: int) -> None:
                # Everything written so far has been read; once the client waits on a live
                # connection (a held long-poll for poll), cut it, then write the next part
                # while the client reconnects.
                await waiting_reader(session, broker, opened, transport)
                proxy.cut()
                await writer.stream(n, n + 100, finish=n == 200, end="done")

            async def on_event(n: int) -> None:
                if n in (100, 200):
                    phases.append(asyncio.create_task(next_phase(n)))

            await writer.stream(0, 100, finish=False)
            events = await asyncio.wait_for(read_all(ch, on_event), 30)
            await asyncio.gather(*phases)
    assert_exactly_once(events, 300)
    assert ch.end_data == "done"
    assert proxy.connections >= 3
    if transport == "poll":
        # aiohttp itself retries an idempotent GET whose pooled connection was cut, so the
        # long-poll chain may recover below the reader: only no loss/no duplicate is visible.
        assert ch.reconnects == len(reconnects) <= 2
    else:
        assert len(reconnects) == 2 and ch.reconnects == 2
        assert [r.last_event_id for r in reconnects] == [events[99].id, events[199].id]
    assert all(r.transport == transport for r in reconnects)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_watchdog_detects_silent_hang_and_resumes(
    broker: str, session: aiohttp.ClientSession, proxy: Proxy, transport: str
) -> None:
    reconnects: list[ReconnectInfo] = []
    async with open_channel(broker, session=session) as opened:
        # The open response tells the heartbeat (0.5 s here): the watchdog allows 2.5 of them.
        assert opened.info["heartbeat"] == 0.5
        writer = Writer(session, opened.token)
        async with subscribe(
            proxy.url, opened.info, transport=transport, session=session,
            on_reconnect=reconnects.append, poll_timeout=1, first_byte_timeout=1.0,
            backoff=Backoff(initial=0.05, maximum=0.5),
        ) as ch:  # fmt: skip
            await writer.messages([{"i": i} for i in range(50)])
            loop = asyncio.get_running_loop()
            stalled_at = 0.0

            async def stall_once(n: int) -> None:
                nonlocal stalled_at
                if n == 50:
                    proxy.stall()  # the connection stays open, nothing more gets through
                    stalled_at = loop.time()
                    await writer.stream(50, 100, end=None)

            events = await asyncio.wait_for(read_all(ch, stall_once), 30)
    assert_exactly_once(events, 100)
    assert reconnects, "the silent connection was never given up"
    first = reconnects[0]
    if transport == "poll":
        # A long-poll has no heartbeat: its deadline is the poll timeout plus a margin.
        assert "no answer" in first.reason
    else:
        assert isinstance(first.error, WatchdogTimeout)
    assert first.last_event_id == events[49].id
    assert loop.time() - stalled_at < 10


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_error_event_raises_typed_exception(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    async with open_channel(broker, transport=transport, session=session) as ch:
        writer = Writer(session, ch.token)
        await writer.messages([{"i": 0}, {"i": 1}])
        await writer.error({"message": "upstream failed", "code": "llm_down"})
        received: list[Any] = []
        with pytest.raises(ChannelErrorEvent) as caught:
            async for data in ch:
                received.append(data)
    assert received == [{"i": 0}, {"i": 1}]
    assert caught.value.code == "llm_down" and caught.value.message == "upstream failed"
    assert caught.value.data == {"message": "upstream failed", "code": "llm_down"}
    assert ch.ended and ch.reconnects == 0
    with pytest.raises(ChannelErrorEvent):  # the error sticks
        await ch.events().__anext__()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refusals_raise_at_once_without_retrying(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    async with open_channel(broker, session=session) as first:
        other = await open_channel(broker, session=session)
        cases = [
            (first.id, first.read_token + "x", 401, "token_invalid"),
            (other.id, first.read_token, 403, "token_wrong_channel"),
            ("no-such-channel", first.read_token, 403, "token_wrong_channel"),
        ]
        for channel_id, token, status, code in cases:
            reconnects: list[ReconnectInfo] = []
            async with subscribe(
                broker, channel_id, token=token, transport=transport, session=session,
                on_reconnect=reconnects.append,
            ) as ch:  # fmt: skip
                with pytest.raises(BrokerError) as caught:
                    await asyncio.wait_for(read_all(ch), 10)
            assert (caught.value.status, caught.value.code) == (status, code)
            assert caught.value.message and not caught.value.retriable
            assert reconnects == []
        # A bad resume position is the caller's error, reported before any request.
        with pytest.raises(ValueError):
            await subscribe(broker, first.info, last_event_id="yesterday")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_subscribe_by_id_token_and_resume_position(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    async with open_channel(broker, session=session) as opened:
        ids = await Writer(session, opened.token).messages([{"i": i} for i in range(10)])
        await Writer(session, opened.token).end("bye")
        refs: list[tuple[Any, str | None]] = [
            (opened.id, opened.read_token),
            (opened.read_token, None),
            (opened.token, None),  # the channel token (write JWT) also reads
        ]
        for ref, token in refs:
            async with subscribe(
                broker, ref, token=token, transport=transport, session=session,
                last_event_id=ids[4],
            ) as ch:  # fmt: skip
                events = await asyncio.wait_for(read_all(ch), 10)
            assert [e.data for e in events] == [{"i": i} for i in range(5, 10)]
            assert ch.end_data == "bye"
        # Resuming after the end event: nothing follows, the reader just finishes.
        async with subscribe(broker, opened.info, transport=transport, session=session) as ch:
            assert len(await read_all(ch)) == 10
            end_id = ch.last_event_id
        async with subscribe(
            broker, opened.info, transport=transport, session=session, last_event_id=end_id
        ) as ch:
            assert await asyncio.wait_for(read_all(ch), 10) == []
            assert ch.ended


async def test_auto_falls_back_when_sse_is_blocked(
    broker: str, session: aiohttp.ClientSession, proxy: Proxy
) -> None:
    proxy.blackhole = b"/events"  # a proxy that holds SSE requests forever
    reconnects: list[ReconnectInfo] = []
    async with open_channel(broker, session=session) as opened:
        await Writer(session, opened.token).stream(0, 20, end=None)
        async with subscribe(
            proxy.url, opened.info, session=session, first_byte_timeout=1.0,
            on_reconnect=reconnects.append,
        ) as ch:  # fmt: skip
            events = await asyncio.wait_for(read_all(ch), 15)
    assert_exactly_once(events, 20)
    assert ch.transport == "ws"
    assert [r.transport for r in reconnects] == ["ws"]
    assert reconnects[0].delay == 0


async def test_gap_is_reported_when_history_was_dropped(session: aiohttp.ClientSession) -> None:
    with broker_process("--max-messages", "20") as url:
        gaps: list[GapInfo] = []
        async with open_channel(url, session=session) as opened:
            ids = await Writer(session, opened.token).messages([{"i": i} for i in range(50)])
            await Writer(session, opened.token).end(None)
            for transport in TRANSPORTS:
                gaps.clear()
                async with subscribe(
                    url, opened.info, transport=transport, session=session,
                    last_event_id=ids[0], on_gap=gaps.append,
                ) as ch:  # fmt: skip
                    events = await asyncio.wait_for(read_all(ch), 10)
                assert len(gaps) == 1, transport
                assert gaps[0].after == ids[0]
                assert events and events[0].id == gaps[0].first_id
                assert events[-1].data == {"i": 49}


def test_sync_iterator(broker: str) -> None:
    info = open_channel_sync(broker)
    token = info["channel_token"]
    write_sync(token, "messages", {"messages": [{"i": i} for i in range(5)]})

    def finish() -> None:
        write_sync(token, "messages", {"messages": [{"i": i} for i in range(5, 10)]})
        write_sync(token, "end", {"data": {"ok": True}})

    threading.Timer(0.3, finish).start()
    with iter_channel_sync(broker, info, transport="sse") as messages:
        received = list(messages)
    assert received == [{"i": i} for i in range(10)]
    assert messages.ended and messages.end_data == {"ok": True}
    assert messages.last_event_id is not None

    # Stopping early is clean; an error event surfaces as the typed exception.
    second = open_channel_sync(broker)
    write_sync(second["channel_token"], "messages", {"messages": [1, 2, 3]})
    with iter_channel_sync(broker, second) as messages:
        assert next(messages) == 1
    write_sync(second["channel_token"], "error", {"data": {"message": "boom"}})
    with pytest.raises(ChannelErrorEvent, match="boom"):
        for _ in iter_channel_sync(broker, second, transport="ws"):
            pass


@pytest.mark.parametrize("transport", ["sse", "chunked"])
async def test_broker_reconnect_event_resumes_at_once(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    reconnects: list[ReconnectInfo] = []
    async with open_channel(
        broker, transport=transport, session=session, max_duration=1,
        on_reconnect=reconnects.append,
    ) as ch:  # fmt: skip
        writer = Writer(session, ch.token)

        async def slow_writer() -> None:
            for i in range(0, 40, 2):
                await writer.messages([{"i": i}, {"i": i + 1}])
                await asyncio.sleep(0.12)
            await writer.end(None)

        write = asyncio.create_task(slow_writer())
        events = await asyncio.wait_for(read_all(ch), 20)
        await write
    assert_exactly_once(events, 40)
    assert reconnects, "the broker never ended a stream after max_duration"
    assert all(r.delay == 0 and r.error is None for r in reconnects)
    assert all("max_duration" in r.reason for r in reconnects)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_deleted_channel_ends_reading_with_channel_gone(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    async with open_channel(broker, transport=transport, session=session, **fast()) as ch:
        await Writer(session, ch.token).messages([{"i": 0}, {"i": 1}])
        received: list[Any] = []

        async def delete() -> None:
            url = f"{broker}/v1/channels/{ch.id}"
            headers = {"Authorization": f"Bearer {ch.token['token']}"}
            async with session.delete(url, headers=headers) as resp:
                assert resp.status == 204

        with pytest.raises(BrokerError) as caught:
            async for data in ch:
                received.append(data)
                if len(received) == 2:
                    await delete()
    assert received == [{"i": 0}, {"i": 1}]
    assert (caught.value.status, caught.value.code) == (410, "channel_gone")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_under_repeated_cuts_mid_stream(
    broker: str, session: aiohttp.ClientSession, proxy: Proxy, transport: str
) -> None:
    """Cuts land at random points of a busy stream (mid-frame included): still exactly once."""
    async with open_channel(broker, session=session) as opened:
        writer = Writer(session, opened.token)
        async with subscribe(
            proxy.url, opened.info, transport=transport, session=session, **fast()
        ) as ch:
            done = asyncio.Event()

            async def cutter() -> None:
                while not done.is_set():
                    await asyncio.sleep(0.04)
                    proxy.cut()

            async def slow_writer() -> None:
                for first in range(0, 300, 5):
                    await writer.messages([{"i": i} for i in range(first, first + 5)])
                    await asyncio.sleep(0.005)
                await writer.end("done")

            tasks = [asyncio.create_task(cutter()), asyncio.create_task(slow_writer())]
            try:
                events = await asyncio.wait_for(read_all(ch), 60)
            finally:
                done.set()
                await asyncio.gather(*tasks)
    assert_exactly_once(events, 300)
    assert ch.end_data == "done"
    assert proxy.connections >= 3
