"""A Redis outage seen over HTTP: a real broker process, a real redis-server that the test kills
and restarts on the same port. While Redis is down every request answers 503 engine_unavailable
with Retry-After (never a 500, never a traceback in the log); /healthz reports the engine and
/readyz fails; after the restart the broker serves again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker import errors
from broker.app import create_app
from broker.config import Settings
from broker.engine.redis import RedisEngine
from tests.broker_process import BrokerProcess
from tests.redis_server import RestartableRedis, free_port

SECRET = "outage:outage-test-secret"
ADMIN = "outage-admin"


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_requests_answer_503_while_redis_is_down_and_work_after_it_returns(
    restartable_redis: RestartableRedis,
) -> None:
    redis = restartable_redis
    args = ("--redis", redis.url, "--secret", SECRET, "--admin-token", ADMIN)
    async with BrokerProcess(*args) as broker, aiohttp.ClientSession() as http:

        async def call(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
            async with http.request(method, url, **kwargs) as response:
                body = await response.json() if response.content_type.endswith("json") else None
                return response.status, dict(response.headers), body

        async with http.post(broker.url + "/v1/channels", json={"name": "outage"}) as response:
            assert response.status == 201
            opened = await response.json()
        read = {"Authorization": f"Bearer {opened['read_token']}"}
        write = {"Authorization": f"Bearer {opened['channel_token']['token']}"}
        admin = {"Authorization": f"Bearer {ADMIN}"}
        base = f"{broker.url}/v1/channels/outage"
        assert (await call("POST", base + "/messages", json={"data": 1}, headers=write))[0] == 201
        status, _, health = await call("GET", broker.url + "/healthz")
        assert (status, health["engine"], health["engine_ok"]) == (200, "redis", True)
        assert (await call("GET", broker.url + "/readyz"))[0] == 200

        redis.kill()

        async def engine_down() -> bool:  # the last probe result is reused for up to a second
            status, _, health = await call("GET", broker.url + "/healthz")
            assert status == 200 and health["engine"] == "redis"
            return health["engine_ok"] is False and health["status"] == "degraded"

        # The broker notices within about a second (its PING probe), whoever asks; from then
        # on requests are refused at once instead of waiting out the engine's retries.
        await until(engine_down, timeout=5)
        requests: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", broker.url + "/v1/channels", {"json": {}}),
            ("POST", base + "/messages", {"json": {"data": 2}, "headers": write}),
            ("POST", base + "/end", {"json": {}, "headers": write}),
            ("GET", base, {"headers": read}),
            ("GET", base + "/poll?timeout=0", {"headers": read}),
            ("GET", base + "/events", {"headers": read}),
            ("GET", base + "/stream", {"headers": read}),
            ("DELETE", base, {"headers": write}),
            ("GET", broker.url + "/v1/channels", {"headers": admin}),
            ("GET", broker.url + "/v1/admin/channels/outage", {"headers": admin}),
        ]
        for method, url, kwargs in requests:
            started = time.monotonic()
            status, headers, body = await call(method, url, **kwargs)
            assert time.monotonic() - started < 2.0, (method, url, "not refused at once")
            assert status == 503, (method, url, status, body)
            assert body["error"]["code"] == "engine_unavailable", (method, url)
            assert int(headers["Retry-After"]) >= 1, (method, url)
        async with http.ws_connect(base.replace("http", "ws", 1) + "/ws", headers=read) as ws:
            rejected = await ws.receive_json()
            assert rejected["error"]["code"] == "engine_unavailable"
            await ws.receive()
            assert ws.close_code == 4503

        status, _, ready = await call("GET", broker.url + "/readyz")
        assert (status, ready["engine_ok"]) == (503, False)

        redis.start()  # the broker works again

        async def ready() -> bool:
            return (await call("GET", broker.url + "/readyz"))[0] == 200

        await until(ready)

        async def opens() -> bool:
            status, _, body = await call("POST", broker.url + "/v1/channels", json={})
            # A stale pooled connection may fail one request: as a 503, never as a 500.
            assert status in (201, 503), (status, body)
            return status == 201

        await until(opens)
        log = broker.output()
        assert "Traceback" not in log and "internal_error" not in log, log
        warnings = [line for line in log.splitlines() if "engine_unavailable" in line]
        assert warnings and all("WARNING" in line for line in warnings), log


async def test_an_engine_error_mid_request_is_a_503_not_a_500(
    restartable_redis: RestartableRedis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine gives up (here after a short retry deadline) before the health probe noticed
    the outage: the error itself must map to 503 engine_unavailable, logged as one WARNING."""
    redis = restartable_redis
    monkeypatch.setattr(errors, "_outage_log", errors._OutageLog())  # no earlier test's lines
    settings = Settings(secret=SECRET, engine="redis", redis_url=redis.url, port=free_port())
    engine = RedisEngine(settings.limits, redis.url, prefix="outage-mid", retry_deadline=0.3)
    runner = web.AppRunner(create_app(settings, engine), shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/channels", json={}) as response:
                assert response.status == 201
                opened = await response.json()
            write = {"Authorization": f"Bearer {opened['channel_token']['token']}"}
            redis.kill()  # the probe's last answer (just now: fine) is still trusted
            for _ in range(3):
                async with http.post(
                    opened["urls"]["messages"], json={"data": 1}, headers=write
                ) as response:
                    assert response.status == 503, await response.text()
                    assert (await response.json())["error"]["code"] == "engine_unavailable"
                    assert response.headers["Retry-After"] == "2"
    finally:
        await runner.cleanup()
    records = [r for r in caplog.records if "engine_unavailable" in r.getMessage()]
    assert len(records) == 1 and records[0].levelname == "WARNING"  # one line, not one each
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("unbroken"))
