"""Broker-wide caps on channel opens, over real sockets from rotating 127.x source addresses
(each address alone stays far below its own per-address limit)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.broker_process import BrokerProcess

SECRET = "caps:caps-test-secret"


async def _open_from(url: str, n: int) -> tuple[int, dict[str, str], Any]:
    """POST /v1/channels from source address 127.0.0.<n>: status, headers, JSON body."""
    connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{n}", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(url + "/v1/channels", json={}) as response:
            return response.status, dict(response.headers), await response.json()


@pytest.mark.parametrize("engine", ["memory", "redis"])
async def test_opens_per_second_are_capped_across_all_addresses(
    engine: str, request: pytest.FixtureRequest
) -> None:
    extra = ("--redis", request.getfixturevalue("redis_url")) if engine == "redis" else ()
    async with BrokerProcess("--secret", SECRET, "--max-open-rate", "10", *extra) as broker:
        results = [await _open_from(broker.url, n) for n in range(2, 42)]
    statuses = [status for status, _, _ in results]
    opened = statuses.count(201)
    # A burst of 10 plus what refills (10/s) while 40 requests run: well under 40.
    assert 10 <= opened <= 20, statuses
    assert statuses.count(429) == 40 - opened, statuses
    _, headers, body = next(r for r in results if r[0] == 429)
    assert body["error"]["code"] == "rate_limited"
    assert "per second" in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1


async def test_channels_held_by_the_memory_engine_are_capped() -> None:
    async with BrokerProcess(
        "--secret", SECRET, "--max-channels", "5", "--max-open-rate", "0"
    ) as broker:
        results = [await _open_from(broker.url, n) for n in range(2, 10)]
        assert [status for status, _, _ in results] == [201] * 5 + [503] * 3
        _, headers, body = results[-1]
        assert body["error"]["code"] == "too_many_channels"
        assert int(headers["Retry-After"]) >= 1
        # Deleting a channel frees its place.
        first = results[0][2]
        async with aiohttp.ClientSession() as session:
            delete = session.delete(
                f"{broker.url}/v1/channels/{first['id']}",
                headers={"Authorization": f"Bearer {first['channel_token']['token']}"},
            )
            async with delete as response:
                assert response.status == 204
        assert (await _open_from(broker.url, 11))[0] == 201
        assert (await _open_from(broker.url, 12))[0] == 503


async def test_a_negative_cap_is_refused_at_start() -> None:
    for flag in ("--max-open-rate", "--max-channels"):
        broker = BrokerProcess("--secret", SECRET, flag, "-1")
        with pytest.raises(RuntimeError, match="must be >= 0"):
            await broker.start()
        await broker.__aexit__(None, None, None)
