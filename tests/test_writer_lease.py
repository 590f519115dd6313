"""The writer lease (issue 7.17) over real sockets, on both engines: a writer that goes silent
ends its channel with `error {"code": "writer_timeout"}` within writer_timeout + 3 s, heartbeats
and writes keep it open, and the open / heartbeat routes answer as documented."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from broker.config import Settings
from broker.engine import redis_layout
from broker.engine.base import ChannelCancelled, ChannelEnded
from tests.support import (
    Broker,
    Received,
    bearer,
    channel_post,
    channel_status,
    read_sse,
    reader_url,
    redis_settings,
    running_broker,
    until_subscribed,
)

LEASE = 5  # the shortest lease the API accepts
LEASE_ERROR = {"code": "writer_timeout", "message": f"The backend wrote nothing for {LEASE} s."}


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    async with running_broker(settings.with_overrides(heartbeat=1.0)) as running:
        yield running


async def write(broker: Broker, opened: dict[str, Any], data: Any) -> None:
    status, body = await channel_post(
        broker, opened, "messages", opened["channel_token"]["token"], {"data": data}
    )
    assert status == 201, body


async def beat(broker: Broker, opened: dict[str, Any]) -> int:
    return (await channel_post(broker, opened, "heartbeat", opened["channel_token"]["token"]))[0]


async def test_silent_writer_ends_the_channel(broker: Broker) -> None:
    watched = await broker.open(writer_timeout=LEASE)
    unwatched = await broker.open(writer_timeout=LEASE)
    assert watched["writer_timeout"] == watched["channel_token"]["writer_timeout"] == LEASE
    received = Received()
    reader = asyncio.create_task(read_sse(broker.session, reader_url(watched, "sse"), received))
    await until_subscribed(broker, watched)
    await write(broker, watched, "the last word")
    await write(broker, unwatched, "the last word")
    silent_since = time.monotonic()
    await asyncio.wait_for(reader, LEASE + 3)
    waited = time.monotonic() - silent_since
    assert LEASE - 0.5 <= waited <= LEASE + 3, waited
    assert received.messages == ["the last word"]
    assert received.terminal == ("error", LEASE_ERROR)

    # Nobody reads the other one: a status request ends it, and a reader then sees why.
    status = await channel_status(broker, unwatched)
    assert (status["state"], status["writer_timeout"]) == ("ended", LEASE)
    late = await read_sse(broker.session, reader_url(unwatched, "sse"), Received())
    assert late.messages == ["the last word"] and late.terminal == ("error", LEASE_ERROR)
    status, refused = await channel_post(
        broker, unwatched, "messages", unwatched["channel_token"]["token"], {"data": "late"}
    )
    assert (status, refused["error"]["code"]) == (409, "channel_ended")
    assert await beat(broker, unwatched) == 409


async def test_heartbeats_and_writes_keep_the_channel_open(broker: Broker) -> None:
    beating = await broker.open(writer_timeout=LEASE)
    writing = await broker.open(writer_timeout=LEASE)
    readers = {}
    tasks = []
    for opened in (beating, writing):
        readers[opened["id"]] = received = Received()
        tasks.append(
            asyncio.create_task(read_sse(broker.session, reader_url(opened, "sse"), received))
        )
        await until_subscribed(broker, opened)
    started = time.monotonic()
    while time.monotonic() - started < LEASE + 4:  # past the lease and the hub's next check
        assert await beat(broker, beating) == 204
        await write(broker, writing, "token")
        await asyncio.sleep(1.5)
    for opened in (beating, writing):
        assert (await channel_status(broker, opened))["state"] == "open"
        assert readers[opened["id"]].terminal is None
    await write(broker, beating, "after the beats")
    assert (await channel_post(broker, beating, "end", beating["channel_token"]["token"], {}))[
        0
    ] == 201
    async with asyncio.timeout(5):
        while readers[beating["id"]].terminal is None:
            await asyncio.sleep(0.02)
    assert readers[beating["id"]].messages == ["after the beats"]
    assert readers[beating["id"]].terminal == ("end", None)
    await channel_post(broker, writing, "end", writing["channel_token"]["token"], {})
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_open_and_heartbeat_answers(settings: Settings) -> None:
    async with running_broker(settings.with_overrides(writer_timeout=7)) as broker:
        default = await broker.open()
        assert default["writer_timeout"] == default["channel_token"]["writer_timeout"] == 7
        assert (await channel_status(broker, default))["writer_timeout"] == 7
        unleased = await broker.open(writer_timeout=0)
        assert unleased["writer_timeout"] == 0
        assert (await channel_status(broker, unleased))["writer_timeout"] == 0
        for bad in (4, 86_401, -1, "10", 5.5, True, None, [10]):
            async with broker.session.post(
                f"{broker.url}/v1/channels", json={"writer_timeout": bad}
            ) as response:
                body = await response.json()
                assert response.status == 400, (bad, body)
                assert body["error"]["code"] == "invalid_writer_timeout"

        assert await beat(broker, default) == 204
        status, refused = await channel_post(broker, default, "heartbeat", default["read_token"])
        assert (status, refused["error"]["code"]) == (403, "token_wrong_scope")
        assert (await channel_post(broker, default, "end", default["channel_token"]["token"], {}))[
            0
        ] == 201
        status, refused = await channel_post(
            broker, default, "heartbeat", default["channel_token"]["token"]
        )
        assert (status, refused["error"]["code"]) == (409, "channel_ended")
        assert (await channel_post(broker, unleased, "cancel", unleased["read_token"]))[0] == 201
        status, refused = await channel_post(
            broker, unleased, "heartbeat", unleased["channel_token"]["token"]
        )
        assert (status, refused["error"]["code"]) == (409, "channel_cancelled")
        gone = await broker.open()
        async with broker.session.delete(
            f"{broker.url}/v1/channels/{gone['id']}", headers=bearer(gone["channel_token"]["token"])
        ) as response:
            assert response.status == 204
        status, refused = await channel_post(
            broker, gone, "heartbeat", gone["channel_token"]["token"]
        )
        assert (status, refused["error"]["code"]) == (410, "channel_gone")


async def test_redis_direct_heartbeat_keeps_the_lease(redis_url: str) -> None:
    settings = redis_settings(redis_url)
    async with running_broker(settings) as broker:
        opened = await broker.open(writer_timeout=LEASE)
        received = Received()
        reader = asyncio.create_task(read_sse(broker.session, reader_url(opened, "sse"), received))
        await until_subscribed(broker, opened)
        redis = Redis.from_url(redis_url)
        try:
            keys = redis_layout.channel_keys(settings.redis_prefix, opened["id"])
            meta = await redis.hmget(keys.meta, ["writer_timeout", "writer_deadline"])
            assert meta[0] == str(LEASE).encode() and int(meta[1]) > 0
            started = time.monotonic()
            while time.monotonic() - started < LEASE + 3:
                await redis_layout.heartbeat(redis, settings.redis_prefix, opened["id"])
                await asyncio.sleep(1.5)
            assert received.terminal is None
            assert int(await redis.hget(keys.meta, "writer_deadline")) > int(meta[1])
            # Then the worker dies: the channel ends within the lease and a check.
            silent_since = time.monotonic()
            await asyncio.wait_for(reader, LEASE + 3)
            assert time.monotonic() - silent_since >= LEASE - 1.5
            assert received.terminal == ("error", LEASE_ERROR)
            with pytest.raises(ChannelEnded):
                await redis_layout.heartbeat(redis, settings.redis_prefix, opened["id"])
            cancelled = await broker.open()
            assert (await channel_post(broker, cancelled, "cancel", cancelled["read_token"]))[
                0
            ] == 201
            with pytest.raises(ChannelCancelled):
                await redis_layout.heartbeat(redis, settings.redis_prefix, cancelled["id"])
        finally:
            await redis.aclose()
