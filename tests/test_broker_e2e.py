"""The broker end to end over real sockets, on the memory and the Redis engine."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from broker.config import Settings
from tests.support import (
    Broker,
    FaultyProxy,
    Received,
    read,
    running_broker,
)
from worker.channel import Channel

TRANSPORTS = ["sse", "chunked", "ws", "poll"]


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    async with running_broker(settings) as running:
        yield running


async def wait_for_subscribers(broker: Broker, opened: dict[str, Any], count: int) -> None:
    url = f"{broker.url}/v1/channels/{opened['id']}"
    headers = {"Authorization": f"Bearer {opened['read_token']}"}
    for _ in range(200):
        async with broker.session.get(url, headers=headers) as response:
            status = await response.json()
        if sum(status["subscribers"].values()) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"subscribers never reached {count}: {status['subscribers']}")


def assert_exact(received: Received, expected: list[Any], end: Any, label: str = "") -> None:
    assert received.messages == expected, label
    assert received.terminal == ("end", end), label
    ids = [event_id for event_id, _, _ in received.events]
    assert len(ids) == len(set(ids)), f"duplicate event ids {label}"


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Wait for `condition` (polled), failing after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)


async def test_every_transport_reads_1000_messages_at_once(broker: Broker) -> None:
    opened = await broker.open()
    readers = [asyncio.create_task(read(broker.session, opened, t)) for t in TRANSPORTS]
    await wait_for_subscribers(broker, opened, 3)  # long-poll is only counted while it waits
    async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
        for n in range(1000):
            await channel.write({"n": n})
        await channel.end({"done": True})
    results = await asyncio.wait_for(asyncio.gather(*readers), 30)
    for transport, received in zip(TRANSPORTS, results, strict=True):
        assert_exact(received, [{"n": n} for n in range(1000)], {"done": True}, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reader_dropped_mid_stream_resumes_without_loss(
    broker: Broker, transport: str
) -> None:
    opened = await broker.open()
    channel = Channel.from_token(opened["channel_token"], broker_url=broker.url)
    await channel.write_many([{"n": n} for n in range(150)])
    first = await read(broker.session, opened, transport, stop_after=100)  # then closes
    assert len(first.events) == 100
    writing = asyncio.create_task(_write_range(channel, 150, 300))
    resumed = await asyncio.wait_for(read(broker.session, opened, transport, first), 30)
    await writing
    assert_exact(resumed, [{"n": n} for n in range(300)], "bye")


async def _write_range(channel: Channel, start: int, stop: int) -> None:
    for n in range(start, stop):
        await channel.write({"n": n})
    await channel.end("bye")
    await channel.close()


async def test_cut_connections_resume_through_a_proxy(broker: Broker) -> None:
    """A network cut (both sides reset) mid-stream, then resume from the last id."""
    opened = await broker.open()
    port = int(broker.url.rsplit(":", 1)[1])
    async with FaultyProxy(port) as proxy:
        proxied = json.loads(
            json.dumps(opened)
            .replace(broker.url, proxy.url)
            .replace(broker.url.replace("http", "ws"), proxy.url.replace("http", "ws"))
        )
        readers = {t: Received() for t in ("sse", "ws")}
        tasks = [asyncio.create_task(read(broker.session, proxied, t, readers[t])) for t in readers]
        channel = Channel.from_token(opened["channel_token"], broker_url=broker.url)
        await channel.write_many(list(range(50)))
        for _ in range(100):
            if all(len(r.events) == 50 for r in readers.values()):
                break
            await asyncio.sleep(0.02)
        proxy.cut()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.write_many(list(range(50, 80)))
        await channel.end(None)
        await channel.close()
        for transport, received in readers.items():
            await asyncio.wait_for(read(broker.session, proxied, transport, received), 10)
            assert_exact(received, list(range(80)), None)


async def _post(
    broker: Broker,
    path: str,
    token: str | None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with broker.session.post(broker.url + path, data=data, headers=all_headers) as response:
        return response.status, await response.json(content_type=None)


async def test_worker_retry_after_lost_response_stores_once(broker: Broker) -> None:
    opened = await broker.open()
    port = int(broker.url.rsplit(":", 1)[1])
    async with FaultyProxy(port) as proxy:
        token = dict(opened["channel_token"], broker=proxy.url)
        channel = Channel.from_token(token, broker_url=proxy.url)
        proxy.lose_responses = 1  # the broker stores the write; its answer is lost
        event_id = await channel.write({"only": "once"})
        await channel.end()
        await channel.close()
    received = await read(broker.session, opened, "poll")
    assert received.messages == [{"only": "once"}]
    assert received.events[0][0] == event_id  # the retry was told the id stored the first time


async def test_idempotency_key_header(broker: Broker) -> None:
    opened = await broker.open()
    path = f"/v1/channels/{opened['id']}/messages"
    token = opened["channel_token"]["token"]
    first = await _post(broker, path, token, {"data": 1}, headers={"Idempotency-Key": "abc"})
    again = await _post(broker, path, token, {"data": 1}, headers={"Idempotency-Key": "abc"})
    assert first[0] == 201 and again[0] == 200
    assert again[1]["duplicate"] is True and again[1]["last_event_id"] == first[1]["ids"][0]


async def test_bad_input_gets_documented_errors_and_loses_nothing(broker: Broker) -> None:
    opened = await broker.open()
    other = await broker.open()
    channel_id, write_token = opened["id"], opened["channel_token"]["token"]
    read_token = opened["read_token"]
    messages = f"/v1/channels/{channel_id}/messages"
    assert (await _post(broker, messages, write_token, {"data": "kept"}))[0] == 201

    forged = write_token[:-4] + ("AAAA" if not write_token.endswith("AAAA") else "BBBB")
    expired = broker.app[__import__("broker.context").context.CONTEXT].keys.sign(
        channel_id, "write", broker.url, ttl=-10
    )
    cases: list[tuple[str, tuple[int, Any], int, str]] = [
        ("no token", await _post(broker, messages, None, {"data": 1}), 401, "token_missing"),
        ("forged", await _post(broker, messages, forged, {"data": 1}), 401, "token_invalid"),
        (
            "garbage token",
            await _post(broker, messages, "x.y.z", {"data": 1}),
            401,
            "token_invalid",
        ),
        ("expired", await _post(broker, messages, expired, {"data": 1}), 401, "token_expired"),
        (
            "other channel's token",
            await _post(broker, messages, other["channel_token"]["token"], {"data": 1}),
            403,
            "token_wrong_channel",
        ),
        (
            "read token writes",
            await _post(broker, messages, read_token, {"data": 1}),
            403,
            "token_wrong_scope",
        ),
        (
            "malformed JSON",
            await _post(broker, messages, write_token, raw=b"{nope"),
            400,
            "invalid_json",
        ),
        (
            "wrong shape",
            await _post(broker, messages, write_token, {"text": 1}),
            400,
            "invalid_body",
        ),
        ("not an object", await _post(broker, messages, write_token, [1, 2]), 400, "invalid_body"),
        (
            "empty batch",
            await _post(broker, messages, write_token, {"messages": []}),
            400,
            "invalid_body",
        ),
        (
            "huge integer",
            await _post(
                broker, messages, write_token, raw=b'{"data": 123456789012345678901234567890}'
            ),
            400,
            "invalid_body",
        ),
        (
            "oversize",
            await _post(broker, messages, write_token, {"data": "x" * 300_000}),
            413,
            "message_too_large",
        ),
        (
            "bad seq",
            await _post(broker, messages, write_token, {"data": 1, "writer": "w", "seq": 0}),
            400,
            "invalid_seq",
        ),
        (
            "bad name",
            await _post(broker, "/v1/channels", None, {"name": "no spaces"}),
            400,
            "invalid_name",
        ),
        (
            "name taken",
            await _post(broker, "/v1/channels", None, {"name": channel_id}),
            409,
            "channel_exists",
        ),
    ]
    for label, (status, body), want_status, want_code in cases:
        assert (status, body["error"]["code"]) == (want_status, want_code), label
        assert body["error"]["message"], label

    async def get(path: str) -> tuple[int, Any]:
        async with broker.session.get(broker.url + path) as response:
            return response.status, await response.json(content_type=None)

    status, body = await get(
        f"/v1/channels/{channel_id}/events?token={read_token}&last_event_id=banana"
    )
    assert (status, body["error"]["code"]) == (400, "bad_last_event_id")
    status, body = await get(f"/v1/channels/{channel_id}/poll?token={read_token}&timeout=999")
    assert (status, body["error"]["code"]) == (400, "invalid_timeout")
    status, body = await get(f"/v1/channels/unknown/events?token={read_token}")
    assert (status, body["error"]["code"]) == (403, "token_wrong_channel")
    status, body = await get("/v1/nowhere")
    assert (status, body["error"]["code"]) == (404, "not_found")

    await _post(broker, f"/v1/channels/{channel_id}/end", write_token, {})
    status, body = await _post(broker, messages, write_token, {"data": "late"})
    assert (status, body["error"]["code"]) == (409, "channel_ended")

    # The broker kept serving and lost nothing.
    received = await read(broker.session, opened, "poll")
    assert received.messages == ["kept"] and received.terminal == ("end", None)


async def test_websocket_rejection_carries_the_error(broker: Broker) -> None:
    opened = await broker.open()
    url = opened["urls"]["ws"] + "?token=not-a-token"
    async with broker.session.ws_connect(url) as socket:
        frame = await socket.receive_json()
        await socket.receive()
        assert frame["type"] == "rejected" and frame["error"]["code"] == "token_invalid"
        assert socket.close_code == 4401


async def test_error_event_ends_every_transport(broker: Broker) -> None:
    opened = await broker.open()
    async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
        await channel.write("partial")
        with pytest.raises(RuntimeError):
            async with channel:
                raise RuntimeError("model crashed")
    for transport in TRANSPORTS:
        received = await asyncio.wait_for(read(broker.session, opened, transport), 10)
        assert received.messages == ["partial"]
        assert received.terminal == ("error", {"message": "model crashed", "type": "RuntimeError"})


async def test_reconnect_after_the_end_is_told_there_is_nothing_more(broker: Broker) -> None:
    opened = await broker.open()
    async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
        await channel.write(1)
    done = await read(broker.session, opened, "sse")
    assert done.terminal == ("end", None)
    again = await read(broker.session, opened, "sse", Received(events=list(done.events)))
    assert again.status == 204
    ws_again = await read(broker.session, opened, "ws", Received(events=list(done.events)))
    assert ws_again.status == 1000 and ws_again.events == done.events
    poll_again = await read(broker.session, opened, "poll", Received(events=list(done.events)))
    assert poll_again.events == done.events  # nothing added, and the poll returned at once


async def test_heartbeats_on_an_idle_stream(settings: Settings) -> None:
    async with running_broker(settings.with_overrides(heartbeat=0.2)) as broker:
        opened = await broker.open()
        sse_received, ws_received = Received(), Received()
        sse = asyncio.create_task(read(broker.session, opened, "sse", sse_received))
        ws = asyncio.create_task(read(broker.session, opened, "ws", ws_received))

        def beats(received: Received, kind: str) -> int:
            return sum(1 for notice, _ in received.notices if notice == kind)

        # Three heartbeats of 0.2 s each on both, with nothing written in between.
        await until(lambda: beats(sse_received, "hb") >= 3 and beats(ws_received, "ping") >= 3)
        assert sse_received.events == ws_received.events == []
        async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
            await channel.write("after the silence")
        await asyncio.gather(sse, ws)
        assert sse_received.messages == ws_received.messages == ["after the silence"]


async def test_chunked_stream_closes_at_max_duration_and_resumes(broker: Broker) -> None:
    opened = await broker.open()
    channel = Channel.from_token(opened["channel_token"], broker_url=broker.url)
    await channel.write("first")
    url = f"{opened['urls']['stream']}?token={opened['read_token']}&max_duration=1"
    from tests.support import read_sse

    received = await asyncio.wait_for(read_sse(broker.session, url, Received()), 5)
    assert received.messages == ["first"]
    assert ("reconnect", {"reason": "max_duration"}) in received.notices
    await channel.end("done")
    await channel.close()
    resumed = await read(broker.session, opened, "chunked", received)
    assert_exact(resumed, ["first"], "done")


async def test_trimmed_history_announces_a_gap(settings: Settings) -> None:
    async with running_broker(settings.with_overrides(max_messages=5)) as broker:
        opened = await broker.open()
        async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
            await channel.write_many(list(range(10)))
        for transport in TRANSPORTS:
            received = await read(broker.session, opened, transport)
            assert received.messages == [6, 7, 8, 9], transport
            gaps = [notice for notice in received.notices if notice[0] == "gap"]
            assert len(gaps) == 1, transport


async def test_delete_disconnects_readers_and_then_410(broker: Broker) -> None:
    opened = await broker.open()
    reader = asyncio.create_task(read(broker.session, opened, "sse"))
    await wait_for_subscribers(broker, opened, 1)
    async with broker.session.delete(
        f"{broker.url}/v1/channels/{opened['id']}",
        headers={"Authorization": f"Bearer {opened['channel_token']['token']}"},
    ) as response:
        assert response.status == 204
    received = await asyncio.wait_for(reader, 5)
    assert ("reconnect", {"reason": "gone"}) in received.notices
    again = await read(broker.session, opened, "sse", received)
    assert again.status == 410


async def test_idle_channel_expires(settings: Settings) -> None:
    async with running_broker(settings.with_overrides(idle_ttl=1)) as broker:
        opened = await broker.open()
        started = asyncio.get_running_loop().time()
        url = f"{broker.url}/v1/channels/{opened['id']}"
        headers = {"Authorization": f"Bearer {opened['read_token']}"}

        async def gone() -> bool:  # a status request reads without refreshing the idle TTL
            async with broker.session.get(url, headers=headers) as response:
                return response.status in (404, 410)

        await until(gone)
        assert asyncio.get_running_loop().time() - started >= 0.9  # not before idle_ttl
        status, body = await _post(
            broker,
            f"/v1/channels/{opened['id']}/messages",
            opened["channel_token"]["token"],
            {"data": 1},
        )
        assert (status, body["error"]["code"]) == (410, "channel_gone")


async def test_open_rate_limit_and_app_key_policy() -> None:
    async with running_broker(open_rate=0.01, open_burst=2) as broker:
        codes = [(await _post(broker, "/v1/channels", None))[0] for _ in range(3)]
        assert codes == [201, 201, 429]
    async with running_broker(open_policy="key", app_keys=("app-key-1",)) as broker:
        assert (await _post(broker, "/v1/channels", None))[1]["error"]["code"] == "app_key_required"
        assert (await _post(broker, "/v1/channels", "wrong"))[1]["error"][
            "code"
        ] == "app_key_invalid"
        assert (await _post(broker, "/v1/channels", "app-key-1"))[0] == 201


async def test_named_channel_and_status(broker: Broker) -> None:
    opened = await broker.open(name="chat-42")
    assert opened["id"] == "chat-42"
    token = json.dumps(opened["channel_token"])
    async with Channel.from_token(token, broker_url=broker.url) as channel:
        await channel.write_many(["a", "b"])
    async with broker.session.get(
        f"{broker.url}/v1/channels/chat-42",
        headers={"Authorization": f"Bearer {opened['read_token']}"},
    ) as response:
        status = await response.json()
    assert status["state"] == "ended" and status["messages"] == 3


async def test_stalled_reader_is_dropped_and_the_others_keep_flowing(settings: Settings) -> None:
    async with running_broker(settings.with_overrides(max_pending_bytes=256 * 1024)) as broker:
        opened = await broker.open()
        host, port = broker.url.removeprefix("http://").split(":")
        # A reader that sends its request and then never reads: its socket buffers fill up.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
        _, stalled = await asyncio.open_connection(sock=raw, limit=1024)
        path = f"/v1/channels/{opened['id']}/events?token={opened['read_token']}"
        stalled.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        healthy = asyncio.create_task(read(broker.session, opened, "ws"))
        await wait_for_subscribers(broker, opened, 2)
        hub = broker.app[__import__("broker.context").context.CONTEXT].hub
        async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
            for n in range(200):  # ~10 MB: more than any loopback socket buffers hold
                await channel.write_many([{"n": n, "pad": "x" * 2000}] * 25)
        received = await asyncio.wait_for(healthy, 60)
        assert len(received.messages) == 5000 and received.terminal == ("end", None)
        assert hub.slow_consumers == 1
        stalled.close()
