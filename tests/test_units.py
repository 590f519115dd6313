"""Unit tests of the pure pieces: tokens, the hub's bounded queues, settings, worker tokens."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from broker.config import Settings, settings_from_env
from broker.context import OpenRateLimiter
from broker.engine.base import Limits
from broker.engine.memory import MemoryEngine
from broker.events import Event, pack
from broker.hub import Closed, Hub
from broker.tokens import KeyRing, TokenError, read_claims_unverified
from worker.channel import parse_token
from worker.errors import BadTokenError


def test_tokens_sign_verify_rotate_and_refuse() -> None:
    old = KeyRing.parse("old:first-secret")
    ring = KeyRing.parse("new:second-secret,old:first-secret")
    token = old.sign("ch_a", "write", "http://b", ttl=60)
    claims = ring.authorize(token, "ch_a", "write")  # signed by a retired key: still verifies
    assert (claims.channel, claims.scope, claims.url) == ("ch_a", "write", "http://b")
    assert ring.sign("ch_a", "read", "u", 60).split(".")[0] != token.split(".")[0]  # new kid

    with pytest.raises(TokenError) as wrong_channel:
        ring.authorize(token, "ch_b", "read")
    assert (wrong_channel.value.status, wrong_channel.value.code) == (403, "token_wrong_channel")
    reader = ring.sign("ch_a", "read", "u", 60)
    with pytest.raises(TokenError) as wrong_scope:
        ring.authorize(reader, "ch_a", "write")
    assert wrong_scope.value.code == "token_wrong_scope"
    with pytest.raises(TokenError) as expired:
        ring.verify(ring.sign("ch_a", "read", "u", 10, now=time.time() - 20))
    assert expired.value.code == "token_expired"
    header, payload, signature = token.split(".")
    tampered_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    for bad in (f"{header}.{tampered_payload}.{signature}", "a.b", "", token + "x"):
        with pytest.raises(TokenError) as invalid:
            ring.verify(bad)
        assert invalid.value.code == "token_invalid"
    with pytest.raises(TokenError):
        KeyRing.parse("other:secret").verify(token)  # unknown kid
    assert read_claims_unverified(token).channel == "ch_a"


def test_worker_accepts_every_form_of_the_channel_token() -> None:
    ring = KeyRing.parse("k:s")
    jwt = ring.sign("ch_x", "write", "http://broker:8080", 60)
    as_dict = {"unbroken": 1, "broker": "http://broker:8080", "channel": "ch_x", "token": jwt}
    for form in (as_dict, json.dumps(as_dict), jwt):
        assert parse_token(form) == ("http://broker:8080", "ch_x", jwt)
    with pytest.raises(BadTokenError, match="read token"):
        parse_token(ring.sign("ch_x", "read", "u", 60))
    for bad in ("{not json", {"broker": "x"}, 42, "garbage"):
        with pytest.raises(BadTokenError):
            parse_token(bad)  # type: ignore[arg-type]


def _event(n: int, size: int = 10) -> Event:
    return Event(f"{n}-0", "message", pack("x" * size))


async def test_slow_subscriber_is_dropped_instead_of_buffering() -> None:
    hub = Hub(MemoryEngine(Limits()), max_pending=1000)
    await hub.start()
    try:
        fast = await hub.subscribe("c", "sse")
        slow = await hub.subscribe("c", "sse")
        for n in range(1, 40):
            hub.deliver("c", [_event(n, 50)])
            assert [e.id for e in fast.take()] == [f"{n}-0"]
        with pytest.raises(Closed) as closed:
            slow.take()
        assert closed.value.reason == "slow_consumer" and slow.pending == 0
        assert hub.slow_consumers == 1
    finally:
        await hub.close()


async def test_subscriber_drops_events_already_replayed() -> None:
    hub = Hub(MemoryEngine(Limits()), max_pending=10_000)
    await hub.start()
    try:
        subscriber = await hub.subscribe("c", "ws")
        hub.deliver("c", [_event(1), _event(2), _event(3)])
        subscriber.seen(_event(2))  # the replay already handed over 1 and 2
        assert [e.id for e in await subscriber.next_batch(0.1)] == ["3-0"]
        assert await subscriber.next_batch(0.05) == []  # timeout: nothing new
        waiter = asyncio.create_task(subscriber.next_batch(5))
        await asyncio.sleep(0)
        hub.deliver("c", None)  # channel deleted
        with pytest.raises(Closed):
            await waiter
    finally:
        await hub.close()


def test_open_rate_limiter_refills() -> None:
    limiter = OpenRateLimiter(rate=1.0, burst=2)
    assert limiter.retry_after("a", now=0) == 0 and limiter.retry_after("a", now=0) == 0
    assert limiter.retry_after("a", now=0) == pytest.approx(1.0)
    assert limiter.retry_after("b", now=0) == 0  # per address
    assert limiter.retry_after("a", now=1.5) == 0


def test_settings_from_env_and_validation() -> None:
    settings = settings_from_env(
        {"UNBROKEN_PORT": "9000", "UNBROKEN_IDLE_TTL": "60", "UNBROKEN_APP_KEYS": "a, b"}
    )
    assert (settings.port, settings.limits.idle_ttl, settings.app_keys) == (9000, 60, ("a", "b"))
    with pytest.raises(ValueError, match="UNBROKEN_PORT"):
        settings_from_env({"UNBROKEN_PORT": "eighty"})
    with pytest.raises(ValueError, match="redis engine"):
        Settings(workers=2, secret="k:s").validate()
    with pytest.raises(ValueError, match="app key"):
        Settings(open_policy="key").validate()
