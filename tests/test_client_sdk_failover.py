"""Several broker URLs (brokers sharing one Redis): the Python client opens on the first that
answers and fails over when one is unreachable or shuts down, losing and repeating nothing. And
broker URLs as people type them (`localhost:8080`), in the client and in `python -m broker`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from typing import Any

import aiohttp
import pytest

from broker.urls import broker_url, broker_urls
from client_sdk import InvalidChannelReference, ReconnectInfo, open_channel, subscribe
from client_sdk.backoff import Backoff
from tests.client_sdk_support import REPO, Writer, broker_process, free_port
from tests.support import redis_settings, running_broker


def test_broker_url_spellings() -> None:
    assert broker_url("localhost:8080") == "http://localhost:8080"
    assert broker_url(" http://b:1/ ") == "http://b:1"
    assert broker_url("https://broker.example.com/base/") == "https://broker.example.com/base"
    assert broker_url("127.0.0.1") == "http://127.0.0.1"
    assert broker_urls("a:1, http://b:2,") == ["http://a:1", "http://b:2"]
    assert broker_urls(["a:1", "https://c"]) == ["http://a:1", "https://c"]
    for bad, says in [
        ("", "no broker URL"),
        ("ws://b:1", "http:// or https://"),
        ("http://", "no host"),
        ("localhost:port", "not a broker URL"),
        ("http://b/?token=x", "no ?query"),
        (",", "no broker URL"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            broker_urls(bad)
    with pytest.raises(ValueError, match="empty"):
        broker_url(" ")
    with pytest.raises(InvalidChannelReference, match="http:// or https://"):
        subscribe("ftp://b", "ch", token="t")


async def test_tail_and_channels_accept_a_url_without_scheme() -> None:
    with broker_process() as url:
        bare = url.removeprefix("http://")
        async with aiohttp.ClientSession() as http, open_channel(bare, session=http) as ch:
            await Writer(http, ch.token).stream(0, 2, end=None)
            tail = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "client_sdk", "tail", bare, ch.id, "--token",
                ch.read_token, "--max-retries", "0",
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(tail.communicate(), 30)
        assert tail.returncode == 0, err.decode()
        assert out.decode().split() == ['{"i":', "0}", '{"i":', "1}"]
    channels = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "channels", "--broker", "ftp://nowhere",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(channels.communicate(), 30)
    assert channels.returncode != 0
    assert "http:// or https://" in err.decode() and "Traceback" not in err.decode()


def fast() -> dict[str, Any]:
    return {"backoff": Backoff(initial=0.05, maximum=0.5), "first_byte_timeout": 2.0}


@pytest.mark.parametrize("transport", ["sse", "ws", "poll"])
async def test_fails_over_between_brokers_without_loss_or_repeat(
    redis_url: str, transport: str
) -> None:
    settings = redis_settings(redis_url)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    reconnects: list[ReconnectInfo] = []
    async with (
        running_broker(settings, heartbeat=0.5) as second,
        contextlib.AsyncExitStack() as stack,
        aiohttp.ClientSession() as http,
    ):
        first = await stack.enter_async_context(running_broker(settings, heartbeat=0.5))
        urls = [dead, first.url, second.url]
        async with open_channel(
            urls, session=http, transport=transport, on_reconnect=reconnects.append, **fast()
        ) as ch:
            assert ch.broker_url == first.url  # the dead one was skipped when opening
            token = {**ch.token, "broker": second.url}  # the writer uses the other broker
            writer = Writer(http, token)
            await writer.messages([{"i": i} for i in range(5)])
            got: list[Any] = []
            async with asyncio.timeout(30):  # without failover: retrying the dead one forever
                async for data in ch:
                    got.append(data)
                    if len(got) == 5:
                        await stack.aclose()  # the first broker shuts down mid-stream
                        await writer.stream(5, 20, end={"n": 20})
    assert got == [{"i": i} for i in range(20)] and ch.end_data == {"n": 20}
    assert ch.broker_url == second.url
    moved = [r for r in reconnects if r.broker == second.url]
    assert moved and moved[0].delay == 0.0, reconnects
