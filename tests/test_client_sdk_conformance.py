"""The Python client against the conformance vectors in tests/conformance/ (the JS SDK's test
suite reads the same files): SSE parsing, backoff, what each HTTP status and WebSocket close code
means to a reader, and the shared vocabulary."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from broker import vocabulary
from client_sdk import Backoff, BrokerError, ReconnectsExhausted, subscribe
from client_sdk.reader import TRANSPORT_NAMES
from client_sdk.sse import SSEParser
from client_sdk.transports import TRANSPORTS, Target

VECTORS = Path(__file__).parent / "conformance"


def _load(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return value


SSE = _load("sse.json")
BACKOFF = _load("backoff.json")
STATUS = _load("status.json")
VOCABULARY = _load("vocabulary.json")


def test_vocabulary_is_the_brokers_and_the_clients() -> None:
    assert list(vocabulary.TRANSPORTS) == VOCABULARY["transports"]
    assert {t: e for e, t in vocabulary.TRANSPORT_OF_ENDPOINT.items()} == VOCABULARY["endpoints"]
    assert list(vocabulary.CHANNEL_STATES) == VOCABULARY["channel_states"]
    assert list(vocabulary.TERMINAL_EVENT_TYPES) == VOCABULARY["terminal_event_types"]
    assert list(vocabulary.RECONNECT_REASONS) == VOCABULARY["reconnect_reasons"]
    for state in VOCABULARY["channel_states"]:
        assert vocabulary.channel_state(state) == state
    with pytest.raises(ValueError, match="unknown channel state"):
        vocabulary.channel_state("closed")
    # The client names its transports as the broker does, and reads the broker's route for each.
    assert sorted(TRANSPORTS) == sorted(VOCABULARY["transports"])
    assert set(TRANSPORT_NAMES) == {"auto", *VOCABULARY["transports"]}
    target = Target(URL("http://b"), "c", "t")
    for name, transport in TRANSPORTS.items():
        assert transport.name == name
        endpoint = VOCABULARY["endpoints"][name]
        assert str(target.url(endpoint)).endswith(f"/v1/channels/c/{endpoint}")
        assert transport.endpoint == endpoint


def _chunkings(raw: bytes, splits: list[list[int]]) -> list[list[bytes]]:
    ways = [[raw], [raw[i : i + 1] for i in range(len(raw))]]
    for cuts in splits:
        bounds = [0, *cuts, len(raw)]
        ways.append([raw[a:b] for a, b in itertools.pairwise(bounds)])
    return ways


@pytest.mark.parametrize("case", SSE["cases"], ids=[c["name"] for c in SSE["cases"]])
def test_sse_vectors(case: dict[str, Any]) -> None:
    raw = case["input"].encode("utf-8")
    for chunks in _chunkings(raw, case["splits"]):
        parser = SSEParser()
        got = [
            {"event": m.event, "data": m.data, "id": m.id}
            for chunk in chunks
            for m in parser.feed(chunk)
        ]
        assert got == case["events"], [len(c) for c in chunks]


class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_backoff_vectors() -> None:
    defaults = Backoff()
    assert (defaults.initial * 1000, defaults.maximum * 1000) == (
        BACKOFF["defaults"]["base_ms"],
        BACKOFF["defaults"]["max_ms"],
    )
    for row in BACKOFF["ceilings"]:
        backoff = Backoff(initial=row["base_ms"] / 1000, maximum=row["max_ms"] / 1000)
        ceilings = []
        for _ in row["ceilings_ms"]:
            ceilings.append(backoff.peek() * 1000)
            backoff.next_delay()
        assert ceilings == pytest.approx(row["ceilings_ms"])
        backoff.reset()
        assert backoff.peek() * 1000 == pytest.approx(row["base_ms"])
    for draw in BACKOFF["draws"]:
        backoff = Backoff(
            initial=draw["base_ms"] / 1000,
            maximum=draw["max_ms"] / 1000,
            rng=_Fixed(draw["random"]),
            attempt=draw["attempt"],
        )
        assert abs(backoff.next_delay() * 1000 - draw["delay_ms"]) < 1, draw
        assert backoff.attempt == draw["attempt"] + 1


def _error_body(row: dict[str, Any]) -> tuple[str, str]:
    if "code" in row:
        body = {"error": {"code": row["code"], "message": f"test {row['status']}"}}
        return json.dumps(body), "application/json"
    return f"<html>{row['status']} from a proxy</html>", "text/html"


@pytest.fixture
async def answering() -> AsyncIterator[str]:
    """A server on a real socket that answers every reader route as the request's `?x=` says:
    `/events`, `/stream`, `/poll` with HTTP status x, `/ws` by closing with code x."""

    async def http(request: web.Request) -> web.StreamResponse:
        index = int(request.headers["X-Row"])
        row = STATUS["http"][index]
        if row["status"] == 204:
            return web.Response(status=204)
        text, content_type = _error_body(row)
        return web.Response(status=row["status"], text=text, content_type=content_type)

    async def ws(request: web.Request) -> web.StreamResponse:
        code = int(request.headers["X-Row"])
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        if code == 1006:  # abnormal closure: no close frame at all, the connection just drops
            assert request.transport is not None
            request.transport.abort()
        else:
            await socket.close(code=code, message=b"test")
        return socket

    app = web.Application()
    for endpoint in ("events", "stream", "poll"):
        app.router.add_get(f"/v1/channels/{{channel_id}}/{endpoint}", http)
    app.router.add_get("/v1/channels/{channel_id}/ws", ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _outcome(url: str, transport: str, row_header: str) -> tuple[str, BaseException | None]:
    async with aiohttp.ClientSession(headers={"X-Row": row_header}) as http:
        channel = subscribe(
            url,
            "conformance",
            token="t",
            transport=transport,
            session=http,
            max_retries=0,
            backoff=Backoff(initial=0.01, maximum=0.01),
            first_byte_timeout=5.0,
        )
        async with channel as ch:
            try:
                got = [data async for data in ch]
            except ReconnectsExhausted as exc:
                return "retry", exc.last_error
            except BrokerError as exc:
                return "fail", exc
            assert got == [] and ch.ended and ch.end_data is None
            return "ended", None


@pytest.mark.parametrize("transport", ["sse", "chunked", "poll"])
async def test_http_status_outcomes(answering: str, transport: str) -> None:
    for index, row in enumerate(STATUS["http"]):
        outcome, error = await _outcome(answering, transport, str(index))
        assert outcome == row["outcome"], (transport, row, error)
        if row["outcome"] == "fail":
            assert isinstance(error, BrokerError)
            assert (error.status, error.code) == (row["status"], row.get("code", "http_error"))


async def test_ws_close_outcomes(answering: str) -> None:
    for row in STATUS["ws_close"]:
        outcome, error = await _outcome(answering, "ws", str(row["code"]))
        assert outcome == row["outcome"], (row, error)
        if row["code"] >= 4000:
            assert isinstance(error, BrokerError) and error.status == row["code"] - 4000
