"""Hostile input against a broker process on both engines: every refusal is a 4xx with a JSON
error body, never a 5xx, a plain-text answer or a silent accept (issue 7.5-7.9)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.broker_process import BrokerProcess

SECRET = "test:secret-for-bad-input"


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerProcess]:
    args = ["--secret", SECRET]
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        args += ["--redis", redis_url, "--redis-prefix", f"test-{uuid.uuid4().hex[:10]}"]
    async with BrokerProcess(*args) as process:
        yield process


async def open_channel(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.post(f"{url}/v1/channels") as response:
        assert response.status == 201, await response.text()
        return dict(await response.json())


def write_headers(opened: dict[str, Any]) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {opened['channel_token']['token']}",
        "Content-Type": "application/json",
    }


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    """(status, error code), asserting the body is the JSON error object."""
    text = await response.text()
    assert response.content_type == "application/json", (response.status, text)
    body = json.loads(text)
    assert body["error"]["message"], body
    return response.status, body["error"]["code"]


async def raw_request(port: int, head: bytes, body_chunks: list[bytes]) -> tuple[int, bytes]:
    """Send a request over a plain socket (chunked when there are chunks); (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        headers = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in headers.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return int(status_line.split()[1]), await reader.readexactly(length)
    finally:
        writer.close()


BAD_IDS = [
    "99999999999999999999-0",  # over 2^64
    "18446744073709551615-18446744073709551615",  # the largest id: nothing comes after it
    "18446744073709551616-0",
    "1-0\n",  # `$` matched before a final newline
    "\u0661-\u0660",  # Arabic-Indic digits matched `\d`
    "1-0 ",
]


async def test_bad_last_event_ids_get_400_on_every_transport(broker: BrokerProcess) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        opened = await open_channel(session, broker.url)
        token = opened["read_token"]
        for bad in BAD_IDS:
            for path in ("events", "stream", "poll"):
                url = f"{broker.url}/v1/channels/{opened['id']}/{path}"
                params = {"token": token, "last_event_id": bad, "timeout": "1"}
                async with session.get(url, params=params) as response:
                    assert await error_of(response) == (400, "bad_last_event_id"), (path, bad)
            # The header form too (headers lose surrounding white space and cannot hold "\n").
            if bad == bad.strip() and bad.isascii():
                url = f"{broker.url}/v1/channels/{opened['id']}/events?token={token}"
                async with session.get(url, headers={"Last-Event-ID": bad}) as response:
                    assert await error_of(response) == (400, "bad_last_event_id"), bad
            url = f"{broker.url}/v1/channels/{opened['id']}/ws"
            async with session.ws_connect(
                url, params={"token": token, "last_event_id": bad}
            ) as socket:
                frame = await socket.receive_json(timeout=5)
                assert frame["type"] == "rejected", frame
                assert frame["error"]["code"] == "bad_last_event_id", (bad, frame)
                await socket.receive(timeout=5)
                assert socket.close_code == 4400
        # The broker still serves the channel afterwards.
        url = f"{broker.url}/v1/channels/{opened['id']}"
        async with session.get(url, params={"token": token}) as response:
            assert response.status == 200


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"[1, NaN]"]


async def test_non_finite_numbers_are_refused(broker: BrokerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        opened = await open_channel(session, broker.url)
        base = f"{broker.url}/v1/channels/{opened['id']}"
        headers = write_headers(opened)
        for value in NON_FINITE:
            for path, body in (
                ("messages", b'{"data": %b}' % value),
                ("messages", b'{"messages": ["ok", %b]}' % value),
                ("end", b'{"data": {"x": %b}}' % value),
                ("error", b'{"data": %b}' % value),
            ):
                async with session.post(f"{base}/{path}", data=body, headers=headers) as response:
                    assert await error_of(response) == (400, "invalid_json"), body
        # Nothing was stored, and the channel is still open for a finite number.
        async with session.post(f"{base}/messages", data=b'{"data": 1e300}', headers=headers) as r:
            assert r.status == 201
        async with session.get(f"{base}/poll", params={"token": opened["read_token"]}) as r:
            assert [e["data"] for e in (await r.json())["events"]] == [1e300]


async def test_deep_nesting_and_huge_numbers_are_400(broker: BrokerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        opened = await open_channel(session, broker.url)
        base = f"{broker.url}/v1/channels/{opened['id']}"
        headers = write_headers(opened)
        cases = [
            (b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
            (b'{"data": ' + b"[" * 900 + b"]" * 900 + b"}", "invalid_json"),
            (b'{"data": ' + b'{"a":' * 65 + b"1" + b"}" * 65 + b"}", "invalid_json"),
            (b'{"data": 1, "writer": "w", "seq": 1e400}', "invalid_json"),
            (b'{"data": 1, "writer": "w", "seq": "1e400"}', "invalid_seq"),
            (b'{"data": 1, "writer": "w", "seq": "\xd9\xa1"}', "invalid_seq"),
            (b'{"data": 1, "writer": "w", "seq": 1.5}', "invalid_seq"),
            (b'{"data": 1, "writer": "w", "seq": true}', "invalid_seq"),
            (b'{"data": 1, "writer": 5, "seq": 1}', "invalid_writer"),
            (b'{"data": ' + b"9" * 5000 + b"}", "invalid_json"),
        ]
        for body, code in cases:
            async with session.post(f"{base}/messages", data=body, headers=headers) as response:
                assert await error_of(response) == (400, code), body[:60]
        # 64 levels are fine.
        deep = b'{"data": ' + b"[" * 63 + b"]" * 63 + b"}"
        async with session.post(f"{base}/messages", data=deep, headers=headers) as response:
            assert response.status == 201, await response.text()


async def test_limits_hold_for_chunked_bodies(broker: BrokerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        opened = await open_channel(session, broker.url)
    path = f"/v1/channels/{opened['id']}/messages"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {opened['channel_token']['token']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    big = b'{"data": "' + b"x" * 900_000 + b'"}'
    chunks = [big[i : i + 65536] for i in range(0, len(big), 65536)]
    status, body = await raw_request(broker.port, head, chunks)
    assert (status, json.loads(body)["error"]["code"]) == (413, "message_too_large")
    for path_end, data in (("end", big), ("error", big)):
        status, body = await raw_request(
            broker.port, head.replace(b"/messages", b"/" + path_end.encode()), [data]
        )
        assert (status, json.loads(body)["error"]["code"]) == (413, "message_too_large")
    # A small chunked message still goes through.
    status, body = await raw_request(broker.port, head, [b'{"data": ', b'"small"}'])
    assert status == 201, body


async def test_names_are_anchored(broker: BrokerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        for name in ["abc\n", "..", ".", "...", "a b", "ab\u0661", "x" * 129, ""]:
            async with session.post(f"{broker.url}/v1/channels", json={"name": name}) as response:
                assert await error_of(response) == (400, "invalid_name"), repr(name)
        async with session.post(f"{broker.url}/v1/channels", json={"name": "a.b:c-d_1"}) as r:
            assert r.status == 201
        opened = await open_channel(session, broker.url)
        base = f"{broker.url}/v1/channels/{opened['id']}/messages"
        headers = write_headers(opened)
        for writer in ["w2\n", "..", "w 2", ""]:
            body = {"data": 1, "writer": writer, "seq": 1}
            async with session.post(base, json=body, headers=headers) as response:
                assert await error_of(response) == (400, "invalid_writer"), repr(writer)
        async with session.post(
            base,
            json={"data": 1},
            headers={**headers, "Unbroken-Writer": "w2.", "Unbroken-Seq": "1"},
        ) as response:
            assert response.status == 201


async def test_messages_per_request_are_capped(broker: BrokerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        opened = await open_channel(session, broker.url)
        base = f"{broker.url}/v1/channels/{opened['id']}"
        headers = write_headers(opened)
        # ~1 MB of tiny messages: refused at once, before any reaches the engine.
        body = b'{"messages": [' + b",".join([b"0"] * 500_000) + b"]}"
        async with session.post(f"{base}/messages", data=body, headers=headers) as response:
            assert await error_of(response) == (400, "too_many_messages")
        body = json.dumps({"messages": list(range(1001))}).encode()
        async with session.post(f"{base}/messages", data=body, headers=headers) as response:
            assert await error_of(response) == (400, "too_many_messages")
        body = json.dumps({"messages": list(range(1000))}).encode()
        async with session.post(f"{base}/messages", data=body, headers=headers) as response:
            assert response.status == 201
            assert len((await response.json())["ids"]) == 1000


async def test_engines_refuse_oversized_batches(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from broker.engine.base import Limits
    from broker.engine.memory import MemoryEngine
    from broker.engine.redis_layout import append_events, create_channel

    items: list[tuple[Any, bytes]] = [("message", b"\x00")] * 1001
    memory = MemoryEngine(Limits())
    await memory.create("c1")
    with pytest.raises(ValueError, match="at most 1000"):
        await memory.append("c1", items)
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    try:
        await create_channel(client, prefix, "c1", Limits())
        with pytest.raises(ValueError, match="at most 1000"):
            await append_events(client, prefix, "c1", items)
        assert (await append_events(client, prefix, "c1", items[:1000])).ids
    finally:
        await client.aclose()
