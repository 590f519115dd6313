"""The worker's trust model (docs/protocol.md, "Trust model"), against a real broker and Redis:
forged or foreign-signed tokens write nothing, and no request goes to a URL a token names."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from broker.engine.redis_layout import channel_keys
from broker.tokens import KeyRing
from tests.support import TEST_SECRET, Broker, read, redis_settings, running_broker
from worker import BadTokenError, Channel

pytestmark = pytest.mark.usefixtures("no_worker_env")


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def forged_none(channel: str, url: str) -> str:
    """An unsigned (alg=none) write token for any channel: what an attacker can make."""
    claims = {"ch": channel, "scope": "write", "url": url, "iat": 1, "exp": 2**40}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


class Listener:
    """A socket that only counts who connects to it: the host a hostile token points at."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    spy = Listener()
    spy.server = await asyncio.start_server(spy._accept, "127.0.0.1", 0)
    yield spy
    spy.server.close()
    await spy.server.wait_closed()


@pytest.fixture
async def redis_broker(redis_url: str) -> AsyncIterator[tuple[Broker, str, str]]:
    settings = redis_settings(redis_url)
    async with running_broker(settings) as broker:
        yield broker, redis_url, settings.redis_prefix


async def stream_length(redis_url: str, prefix: str, channel: str) -> int:
    client = Redis.from_url(redis_url)
    try:
        return int(await client.xlen(channel_keys(prefix, channel).events))
    finally:
        await client.aclose()


async def test_redis_direct_writes_need_a_verified_token(
    redis_broker: tuple[Broker, str, str],
) -> None:
    broker, redis_url, prefix = redis_broker
    victim = await broker.open()
    own = await broker.open()
    redis = {"redis_url": redis_url, "redis_prefix": prefix}
    forged = forged_none(victim["id"], broker.url)
    foreign = KeyRing.parse("other:another-brokers-key").sign(victim["id"], "write", broker.url, 60)
    for token in (forged, foreign, {**own["channel_token"], "token": forged}):
        with pytest.raises(BadTokenError) as refused:
            await Channel.from_token(token, secret=TEST_SECRET, **redis).write("injected")
        assert refused.value.code == "token_invalid"
    # Without the key ring nothing can be verified, so even the genuine token is refused,
    # with the setting to fix named.
    with pytest.raises(BadTokenError, match="UNBROKEN_SECRET") as unverified:
        Channel.from_token(own["channel_token"], **redis)
    assert unverified.value.code == "token_unverified"
    assert await stream_length(redis_url, prefix, victim["id"]) == 0

    # The genuine token with the broker's key ring writes.
    async with Channel.from_token(own["channel_token"], secret=TEST_SECRET, **redis) as channel:
        await channel.write("mine")
    received = await read(broker.session, own, "poll")
    assert received.messages == ["mine"] and received.terminal == ("end", None)


async def test_http_writes_refuse_forged_tokens(listener: Listener) -> None:
    async with running_broker() as broker:
        victim = await broker.open()
        foreign = KeyRing.parse("other:another-brokers-key").sign(
            victim["id"], "write", broker.url, 60
        )
        forged = forged_none(victim["id"], broker.url)
        for token in (forged, foreign):
            # With the key ring the worker refuses before sending anything ...
            with pytest.raises(BadTokenError) as local:
                Channel.from_token(token, broker_url=broker.url, secret=TEST_SECRET)
            assert local.value.code == "token_invalid"
            # ... and without it the broker does.
            channel = Channel.from_token(token, broker_url=broker.url)
            with pytest.raises(BadTokenError):
                await channel.write("injected")
            await channel.close()
        async with Channel.from_token(victim["channel_token"], broker_url=broker.url):
            pass  # the genuine writer ends it: the reader sees only that end
        received = await read(broker.session, victim, "poll")
        assert received.messages == [] and received.terminal == ("end", None)


async def test_a_token_never_sends_the_worker_elsewhere(listener: Listener) -> None:
    async with running_broker() as broker:
        opened = await broker.open()
        ring = KeyRing.parse(TEST_SECRET)
        # The serialized object's URL and the (genuinely signed) claim both point at the spy.
        redirected = dict(opened["channel_token"], broker=listener.url)
        signed_elsewhere = ring.sign(opened["id"], "write", listener.url, 60)
        for token in (redirected, signed_elsewhere):
            for options in ({"broker_url": broker.url}, {}, {"secret": TEST_SECRET}):
                with pytest.raises(BadTokenError, match="UNBROKEN_BROKER_URL") as refused:
                    channel = Channel.from_token(token, **options)
                    await channel.write("to the spy?")
                assert refused.value.code == "broker_not_allowed"
        # An allow-list of several brokers; the token's URL picks one by scheme://host:port.
        spelled = dict(
            opened["channel_token"], broker=broker.url.replace("http://", "HTTP://") + "/"
        )
        allow = f"http://elsewhere.invalid:80,{broker.url}"
        async with Channel.from_token(spelled, broker_url=allow, secret=TEST_SECRET) as channel:
            await channel.write("through the allowed broker")
        received = await read(broker.session, opened, "poll")
        assert received.messages == ["through the allowed broker"]
    await asyncio.sleep(0.1)  # a connection attempt, had there been one, is accepted by now
    assert listener.connections == 0


def test_origin_normalisation() -> None:
    from worker.trust import origin

    assert origin("HTTP://Broker.Example.com/") == "http://broker.example.com:80"
    assert origin("https://broker.example.com:443/x") == "https://broker.example.com:443"
    assert origin("https://b:8443") == "https://b:8443"
    assert origin("ftp://b") is None and origin("http://b:99999") is None
