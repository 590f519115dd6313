"""Cancel ("stop generation", issue 10.1) over real sockets, on both engines: the route, what
every transport's reader sees, the writer's 409, `?only=terminal`, and a cancel on one broker seen
on another through Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from broker.config import Settings
from broker.engine import redis_layout
from broker.engine.base import ChannelCancelled
from broker.events import pack, unpack
from tests.support import (
    Broker,
    Received,
    bearer,
    channel_post,
    read,
    read_sse,
    redis_settings,
    running_broker,
    until_subscribed,
)

TRANSPORTS = ["sse", "chunked", "ws", "poll"]


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    async with running_broker(settings.with_overrides(heartbeat=0.3)) as running:
        yield running


async def write(broker: Broker, opened: dict[str, Any], data: Any) -> tuple[int, Any]:
    return await channel_post(
        broker, opened, "messages", opened["channel_token"]["token"], {"data": data}
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_transport_sees_the_cancel(broker: Broker, transport: str) -> None:
    opened = await broker.open()
    assert (await write(broker, opened, "token 1"))[0] == 201
    reader = asyncio.create_task(read(broker.session, opened, transport))
    await until_subscribed(broker, opened)
    status, body = await channel_post(
        broker, opened, "cancel", opened["read_token"], {"reason": "stop"}
    )
    assert status == 201 and body["duplicate"] is False
    assert body["ids"] == [body["last_event_id"]]
    received: Received = await asyncio.wait_for(reader, 10)
    assert received.messages == ["token 1"]
    assert received.events[-1] == (body["last_event_id"], "cancelled", {"reason": "stop"})
    # A reconnect after it is told there is nothing more, as after `end`.
    again = await read(broker.session, opened, transport, Received(events=list(received.events)))
    assert again.events == received.events
    if transport in ("sse", "chunked"):
        assert again.status == 204
    elif transport == "ws":
        assert again.status == 1000


async def test_websocket_closes_with_reason_cancelled(broker: Broker) -> None:
    opened = await broker.open()
    url = f"{opened['urls']['ws']}?token={opened['read_token']}"
    async with broker.session.ws_connect(url) as socket:
        await until_subscribed(broker, opened)
        status, body = await channel_post(broker, opened, "cancel", opened["read_token"])
        assert status == 201
        frame = await socket.receive(timeout=5)
        assert json.loads(frame.data) == {
            "type": "cancelled",
            "id": body["last_event_id"],
            "data": {"reason": None},
        }
        closing = await socket.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert (closing.data, closing.extra) == (1000, "cancelled")


async def test_poll_returns_the_cancel_with_ended(broker: Broker) -> None:
    opened = await broker.open()
    url = opened["urls"]["poll"]
    poll = asyncio.create_task(
        broker.session.get(url, params={"token": opened["read_token"], "timeout": "10"})
    )
    await until_subscribed(broker, opened)
    status, body = await channel_post(broker, opened, "cancel", opened["channel_token"]["token"])
    assert status == 201  # the write token may cancel too
    async with await poll as response:
        batch = await response.json()
    assert batch["ended"] is True and batch["last_event_id"] == body["last_event_id"]
    assert [(e["type"], e["data"]) for e in batch["events"]] == [("cancelled", {"reason": None})]


async def test_cancel_route_answers(broker: Broker) -> None:
    opened = await broker.open()
    read_token, write_token = opened["read_token"], opened["channel_token"]["token"]
    for bad in (
        b"{",
        b"[1]",
        json.dumps({"reason": 5}).encode(),
        json.dumps({"reason": "x" * 201}).encode(),
    ):
        status, body = await channel_post(broker, opened, "cancel", read_token, bad)
        assert status == 400, body
        assert body["error"]["code"] in ("invalid_json", "invalid_body", "invalid_reason")
    status, body = await channel_post(broker, opened, "cancel", read_token, {"reason": 5})
    assert (status, body["error"]["code"]) == (400, "invalid_reason")
    url = f"{broker.url}/v1/channels/{opened['id']}/cancel"
    async with broker.session.post(url) as response:
        assert response.status == 401
    other = await broker.open()
    status, body = await channel_post(broker, opened, "cancel", other["read_token"])
    assert (status, body["error"]["code"]) == (403, "token_wrong_channel")

    status, first = await channel_post(broker, opened, "cancel", read_token, {"reason": "x" * 200})
    assert status == 201
    status, again = await channel_post(broker, opened, "cancel", write_token, {"reason": "again"})
    assert status == 200
    assert again == {"ids": [], "duplicate": True, "last_event_id": first["last_event_id"]}
    for action, payload in (("messages", {"data": 1}), ("end", {}), ("error", {})):
        status, body = await channel_post(broker, opened, action, write_token, payload)
        assert (status, body["error"]["code"]) == (409, "channel_cancelled"), action
    async with broker.session.get(
        f"{broker.url}/v1/channels/{opened['id']}", headers=bearer(read_token)
    ) as response:
        assert (await response.json())["state"] == "cancelled"

    ended = await broker.open()
    assert (await channel_post(broker, ended, "end", ended["channel_token"]["token"], {}))[0] == 201
    status, body = await channel_post(broker, ended, "cancel", ended["read_token"])
    assert (status, body["error"]["code"]) == (409, "channel_ended")

    vanished = await broker.open()
    async with broker.session.delete(
        f"{broker.url}/v1/channels/{vanished['id']}",
        headers=bearer(vanished["channel_token"]["token"]),
    ) as response:
        assert response.status == 204
    status, body = await channel_post(broker, vanished, "cancel", vanished["read_token"])
    assert (status, body["error"]["code"]) == (410, "channel_gone")


def terminal_url(opened: dict[str, Any], token: str) -> str:
    return f"{opened['urls']['events']}?only=terminal&token={token}"


async def test_only_terminal_tells_the_writer(broker: Broker) -> None:
    opened = await broker.open()
    write_token = opened["channel_token"]["token"]
    await write(broker, opened, "before")  # not replayed: the stream starts at the current end
    heard = Received()
    listening = asyncio.create_task(
        read_sse(broker.session, terminal_url(opened, write_token), heard)
    )
    await until_subscribed(broker, opened)
    for n in range(20):
        await write(broker, opened, n)
    async with asyncio.timeout(5):  # heartbeats (every 0.3 s) keep coming; messages do not
        while sum(1 for kind, _ in heard.notices if kind == "hb") < 2:
            await asyncio.sleep(0.05)
    status, body = await channel_post(
        broker, opened, "cancel", opened["read_token"], {"reason": "stop"}
    )
    assert status == 201
    await asyncio.wait_for(listening, 10)
    assert heard.status == 200
    assert heard.events == [(body["last_event_id"], "cancelled", {"reason": "stop"})]
    assert sum(1 for kind, _ in heard.notices if kind == "hb") >= 2

    # A writer connecting after the cancel hears it at once; resuming past it gets 204.
    late = await asyncio.wait_for(
        read_sse(broker.session, terminal_url(opened, write_token), Received()), 5
    )
    assert late.events == heard.events
    done = await read_sse(
        broker.session,
        terminal_url(opened, write_token),
        Received(),
        headers={"Last-Event-ID": body["last_event_id"]},
    )
    assert done.status == 204

    ending = await broker.open()
    listening = asyncio.create_task(
        read_sse(broker.session, terminal_url(ending, ending["channel_token"]["token"]), Received())
    )
    await until_subscribed(broker, ending)
    await write(broker, ending, "x")
    status, body = await channel_post(
        broker, ending, "end", ending["channel_token"]["token"], {"data": 1}
    )
    heard = await asyncio.wait_for(listening, 10)
    assert heard.events == [(body["last_event_id"], "end", 1)]

    async with broker.session.get(
        f"{opened['urls']['events']}?only=messages&token={write_token}"
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_only"


async def test_cancel_on_one_broker_reaches_readers_and_writers_of_another(
    redis_url: str,
) -> None:
    settings = redis_settings(redis_url)
    async with running_broker(settings) as first, running_broker(settings) as second:
        opened = await first.open()
        on_second = {
            **opened,
            "urls": {
                k: v.replace(first.url[7:], second.url[7:]) for k, v in opened["urls"].items()
            },
        }
        keys = redis_layout.channel_keys(settings.redis_prefix, opened["id"])
        redis = Redis.from_url(redis_url)
        pubsub = redis.pubsub()
        try:
            # The scripts publish with SPUBLISH where the server has it (Redis >= 7).
            if await redis_layout.sharded_pubsub(redis):
                await pubsub.ssubscribe(keys.live)
            else:
                await pubsub.subscribe(keys.live)
            assert (await write(second, on_second, "token"))[0] == 201
            reader = asyncio.create_task(read(second.session, on_second, "sse"))
            await until_subscribed(second, on_second)
            status, body = await channel_post(
                first, opened, "cancel", opened["read_token"], {"reason": "x"}
            )
            assert status == 201
            received: Received = await asyncio.wait_for(reader, 10)
            assert received.events[-1] == (body["last_event_id"], "cancelled", {"reason": "x"})

            status, refused = await write(second, on_second, "late")
            assert (status, refused["error"]["code"]) == (409, "channel_cancelled")
            # A writer on Redis directly: the append is refused, the meta state says so, and the
            # live pub/sub channel carried the `cancelled` entry.
            with pytest.raises(ChannelCancelled):
                await redis_layout.append_events(
                    redis, settings.redis_prefix, opened["id"], [("message", pack("late"))]
                )
            assert await redis.hget(keys.meta, "state") == b"cancelled"
            entries = []
            async with asyncio.timeout(5):
                while len(entries) < 2:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None and message["type"] in ("message", "smessage"):
                        entries.append(message["data"].split(b"\n", 2))
            entry_id, kind, data = entries[-1]
            assert (entry_id.decode(), kind, unpack(data)) == (
                body["last_event_id"],
                b"cancelled",
                {"reason": "x"},
            )
        finally:
            await pubsub.aclose()
            await redis.aclose()
