"""Operator surface: the OpenAPI document against the real router and real responses, /metrics
after real traffic, admin protection, dashboard files, JSON logs of a real broker process."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from broker.app import create_app
from broker.config import Settings
from broker.openapi import document
from tests.broker_process import BrokerProcess

ADMIN = "ops-admin-token"


async def _client(settings: Settings) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    # Admin routes need the admin token unless the broker runs with --admin-open (local dev).
    client = await _client(Settings(secret="k1:" + "s" * 32, admin_open=True))
    yield client
    await client.close()


async def open_channel(client: TestClient[Any, Any], name: str | None = None) -> dict[str, Any]:
    response = await client.post("/v1/channels", json={"name": name} if name else {})
    assert response.status == 201, await response.text()
    return dict(await response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- a tiny JSON Schema check: the subset openapi.py uses ----------------------------------------


def check(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str = "$") -> None:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return check(value, doc["components"]["schemas"][name], doc, path)
    for part in schema.get("allOf", []):
        check(value, part, doc, path)
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                check(value, option, doc, path)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, f"{path}: {value!r} matches {matches} of oneOf"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        python = {
            "object": dict,
            "array": list,
            "string": str,
            "boolean": bool,
            "null": type(None),
            "integer": int,
            "number": (int, float),
        }
        numeric = ("integer", "number")
        ok = any(
            isinstance(value, python[t]) and not (t in numeric and isinstance(value, bool))
            for t in types
        )
        assert ok, f"{path}: {value!r} is not {types}"
    if "pattern" in schema and isinstance(value, str):
        assert re.search(schema["pattern"], value), f"{path}: {value!r} !~ {schema['pattern']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check(value[key], sub, doc, f"{path}.{key}")
        if isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                if key not in schema.get("properties", {}):
                    check(item, schema["additionalProperties"], doc, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            check(item, schema["items"], doc, f"{path}[{n}]")
    return None


def test_the_checker_rejects_wrong_values() -> None:
    doc = document("http://x")
    with pytest.raises(AssertionError, match="missing 'read_token'"):
        check({"id": "a", "state": "open"}, {"$ref": "#/components/schemas/Opened"}, doc)
    with pytest.raises(AssertionError, match="not in"):
        health = {"status": "sleepy", "engine": "memory", "engine_ok": True}
        check(health, {"$ref": "#/components/schemas/Health"}, doc)
    with pytest.raises(AssertionError, match="is not"):
        token = {"unbroken": 1, "broker": 5, "channel": "c", "token": "t"}
        check(token, {"$ref": "#/components/schemas/ChannelToken"}, doc)


# --- OpenAPI -----------------------------------------------------------------------------------


async def test_openapi_documents_exactly_the_routes_of_the_router(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    routed = {
        (route.resource.canonical, route.method.lower())
        for route in client.app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "OPTIONS")
    }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routed - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routed == set(), "documented routes that do not exist"
    # Every path parameter of a template is declared, and every response is described.
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert operation["responses"], (method, path)
            for response_doc in operation["responses"].values():
                assert response_doc["description"]


async def _checked(
    response: aiohttp.ClientResponse, doc: dict[str, Any], path: str, method: str
) -> Any:
    """The JSON body, after checking it against the documented schema for its status."""
    documented = doc["paths"][path][method]["responses"]
    assert str(response.status) in documented, f"{method} {path}: undocumented {response.status}"
    body = await response.json()
    check(body, documented[str(response.status)]["content"]["application/json"]["schema"], doc)
    return body


async def test_real_responses_match_their_documented_schemas(
    client: TestClient[Any, Any],
) -> None:
    doc = document("http://x")
    opened = await _checked(await client.post("/v1/channels", json={}), doc, "/v1/channels", "post")
    cid, write = opened["id"], opened["channel_token"]["token"]
    base = f"/v1/channels/{cid}"
    written = await _checked(
        await client.post(
            f"{base}/messages",
            json={"messages": [1, {"a": None}], "writer": "w", "seq": 1},
            headers=bearer(write),
        ),
        doc,
        "/v1/channels/{channel_id}/messages",
        "post",
    )
    assert written["duplicate"] is False
    duplicate = await _checked(
        await client.post(
            f"{base}/messages", json={"data": 3, "writer": "w", "seq": 1}, headers=bearer(write)
        ),
        doc,
        "/v1/channels/{channel_id}/messages",
        "post",
    )
    assert duplicate["duplicate"] is True
    polled = await _checked(
        await client.get(f"{base}/poll?timeout=0", headers=bearer(opened["read_token"])),
        doc,
        "/v1/channels/{channel_id}/poll",
        "get",
    )
    assert [e["data"] for e in polled["events"]] == [1, {"a": None}]
    await _checked(
        await client.post(f"{base}/end", json={"data": "bye"}, headers=bearer(write)),
        doc,
        "/v1/channels/{channel_id}/end",
        "post",
    )
    status = await _checked(
        await client.get(base, headers=bearer(write)), doc, "/v1/channels/{channel_id}", "get"
    )
    assert status["state"] == "ended"
    # Documented errors carry the error schema (and their code is listed for that status).
    ended = await client.post(f"{base}/messages", json={"data": 1}, headers=bearer(write))
    error = await _checked(ended, doc, "/v1/channels/{channel_id}/messages", "post")
    assert error["error"]["code"] == "channel_ended"
    assert (
        "channel_ended"
        in doc["paths"]["/v1/channels/{channel_id}/messages"]["post"]["responses"]["409"][
            "description"
        ]
    )
    listing = await _checked(await client.get("/v1/channels"), doc, "/v1/channels", "get")
    assert [c["id"] for c in listing["channels"]] == [cid]
    inspected = await _checked(
        await client.get(f"/v1/admin/channels/{cid}?tail=2"),
        doc,
        "/v1/admin/channels/{channel_id}",
        "get",
    )
    assert [e["type"] for e in inspected["events"]] == ["message", "end"]
    await _checked(
        await client.post(f"/v1/admin/channels/{cid}/read-token"),
        doc,
        "/v1/admin/channels/{channel_id}/read-token",
        "post",
    )
    await _checked(await client.get("/v1/admin/stats"), doc, "/v1/admin/stats", "get")
    await _checked(await client.get("/healthz"), doc, "/healthz", "get")
    missing = await client.post("/v1/admin/channels/nope/read-token")
    assert (await _checked(missing, doc, "/v1/admin/channels/{channel_id}/read-token", "post"))[
        "error"
    ]["code"] == "channel_not_found"


# --- metrics -----------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[Any, ...]], float]  # (name, sorted labels) -> value


async def scrape(client: TestClient[Any, Any]) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_real_traffic(client: TestClient[Any, Any]) -> None:
    opened = await open_channel(client, "metered")
    write, read = opened["channel_token"]["token"], opened["read_token"]
    base = "/v1/channels/metered"
    async with (
        client.session.get(client.make_url(f"{base}/events"), headers=bearer(read)) as stream,
        client.session.ws_connect(client.make_url(f"{base}/ws?token={read}")) as socket,
    ):
        await stream.content.readuntil(b"retry: 1000\n\n")
        before = await scrape(client)
        assert before[("unbroken_subscribers", (("transport", "sse"),))] == 1
        assert before[("unbroken_subscribers", (("transport", "ws"),))] == 1
        assert before[("unbroken_watched_channels", ())] == 1
        response = await client.post(
            f"{base}/messages", json={"messages": ["a", "b", "c"]}, headers=bearer(write)
        )
        assert response.status == 201
        ids = (await response.json())["ids"]
        for _ in range(3):
            assert (await socket.receive_json())["type"] == "message"
        await stream.content.readuntil(f"id: {ids[-1]}\n".encode())
    # A resume (with a last id), a WebSocket rejection and an unknown route, all counted.
    async with client.get(
        f"{base}/poll?timeout=0&last_event_id={ids[0]}", headers=bearer(read)
    ) as response:
        assert len((await response.json())["events"]) == 2
    async with client.session.ws_connect(client.make_url(f"{base}/ws?token=bad")) as socket:
        assert (await socket.receive_json())["error"]["code"] == "token_invalid"
    assert (await client.get("/nowhere")).status == 404
    assert (await client.post(f"{base}/messages", json={"data": 1})).status == 401

    after = await scrape(client)
    assert after[("unbroken_channels_opened_total", ())] == 1
    assert after[("unbroken_channels", (("state", "open"),))] == 1
    assert after[("unbroken_messages_written_total", (("type", "message"),))] == 3
    assert after[("unbroken_events_relayed_total", (("type", "message"),))] == 3
    assert after[("unbroken_messages_delivered_total", ())] == 6  # 3 events x 2 readers
    assert after[("unbroken_reader_requests_total", (("transport", "poll"),))] == 1
    assert after[("unbroken_resumes_total", (("transport", "poll"),))] == 1
    assert after[("unbroken_resumes_total", (("transport", "sse"),))] == 0
    assert after[("unbroken_reader_requests_total", (("transport", "ws"),))] == 1
    errors = {k[1]: v for k, v in after.items() if k[0] == "unbroken_http_errors_total"}
    assert errors == {
        (("code", "token_invalid"), ("status", "401")): 1,
        (("code", "not_found"), ("status", "404")): 1,
        (("code", "token_missing"), ("status", "401")): 1,
    }
    appended = (
        "unbroken_engine_operation_seconds_count",
        (("engine", "memory"), ("operation", "append")),
    )
    assert after[appended] == 1
    assert after[("unbroken_subscribers", (("transport", "sse"),))] == 0


async def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    first = await _client(Settings(admin_open=True))
    second = await _client(Settings(admin_open=True))
    try:
        await open_channel(first)
        assert (await scrape(first))[("unbroken_channels_opened_total", ())] == 1
        assert (await scrape(second))[("unbroken_channels_opened_total", ())] == 0
    finally:
        await first.close()
        await second.close()


async def test_metrics_and_admin_json_need_the_admin_token_when_one_is_set() -> None:
    client = await _client(Settings(admin_token=ADMIN))
    try:
        for path in ("/metrics", "/v1/admin/stats"):
            missing = await client.get(path)
            assert missing.status == 401
            assert (await missing.json())["error"]["code"] == "token_missing"
            wrong = await client.get(path, headers=bearer("nope"))
            assert (await wrong.json())["error"]["code"] == "admin_token_invalid"
            assert (await client.get(path, headers=bearer(ADMIN))).status == 200
        # The page itself carries no data and loads without the token.
        page = await client.get("/dashboard")
        assert page.status == 200 and "<title>Unbroken dashboard" in await page.text()
    finally:
        await client.close()


async def test_redis_command_latency_is_recorded(redis_url: str) -> None:
    prefix = f"ops-test-{uuid.uuid4().hex[:8]}"
    client = await _client(
        Settings(engine="redis", redis_url=redis_url, redis_prefix=prefix, admin_open=True)
    )
    try:
        opened = await open_channel(client)
        response = await client.post(
            f"/v1/channels/{opened['id']}/messages",
            json={"data": 1},
            headers=bearer(opened["channel_token"]["token"]),
        )
        assert response.status == 201
        samples = await scrape(client)
        commands = {
            dict(labels)["command"]: value
            for (name, labels), value in samples.items()
            if name == "unbroken_redis_command_seconds_count"
        }
        # The Lua scripts run as EVALSHA (or EVAL the first time); both are commands we time.
        assert commands.get("EVALSHA", 0) + commands.get("EVAL", 0) >= 2, commands
        append = (
            "unbroken_engine_operation_seconds_count",
            (("engine", "redis"), ("operation", "append")),
        )
        assert samples[append] == 1
        await client.delete(
            f"/v1/channels/{opened['id']}", headers=bearer(opened["channel_token"]["token"])
        )
    finally:
        await client.close()


# --- dashboard files ---------------------------------------------------------------------------


async def test_dashboard_serves_its_files_and_nothing_else(client: TestClient[Any, Any]) -> None:
    page = await client.get("/dashboard")
    assert page.headers["Content-Type"].startswith("text/html")
    script = await client.get("/dashboard/app.js")
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")  # else modules fail
    # aiohttp decodes %2F inside a path parameter, so these really reach the file lookup; the
    # .mjs exists and has an allowed suffix, so only the containment check refuses it.
    for path in (
        "/dashboard/..%2F..%2F..%2Ftests%2Fbrowser%2Fdashboard.mjs",
        "/dashboard/..%2F..%2Fapp.py",
        "/dashboard/sdk/..%2F..%2F..%2F..%2Fbroker%2Fapp.py",
        "/dashboard/missing.js",
        "/dashboard/index.txt",
    ):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["error"]["code"] == "not_found"


# --- logs --------------------------------------------------------------------------------------


async def test_json_logs_name_channel_and_transport() -> None:
    async with BrokerProcess("--log-json", "--log-level", "debug") as broker:
        async with aiohttp.ClientSession() as session:
            async with session.post(broker.url + "/v1/channels", json={"name": "logged"}) as r:
                read = (await r.json())["read_token"]
            async with session.get(
                broker.url + "/v1/channels/logged/events", headers=bearer(read)
            ) as stream:
                await stream.content.readuntil(b"retry: 1000\n\n")
        for _ in range(100):  # the disconnect is logged once the broker notices the close
            output = broker.output().splitlines()
            lines = [json.loads(line) for line in output if line.startswith("{")]
            events = [(x["message"], x.get("channel"), x.get("transport")) for x in lines]
            if any(m.startswith("reader disconnected") for m, _, _ in events):
                break
            await asyncio.sleep(0.05)
    assert ("reader connected", "logged", "sse") in events
    assert any(
        m.startswith("reader disconnected") and c == "logged" and t == "sse" for m, c, t in events
    )
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
