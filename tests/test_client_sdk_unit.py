"""Unit tests of the pure parts of the Python client: SSE parsing, ids, backoff, references."""

from __future__ import annotations

import base64
import json
import random

import pytest

from client_sdk import ChannelErrorEvent, InvalidChannelReference
from client_sdk.backoff import Backoff
from client_sdk.errors import BrokerError, ProtocolViolation
from client_sdk.ids import is_after, parse_event_id
from client_sdk.models import Control, Event
from client_sdk.refs import resolve
from client_sdk.sse import SSEMessage, SSEParser
from client_sdk.transports import _sse_frame, parse_event

STREAM = (
    b"retry: 1000\n\n"
    b'id: 1732500000000-0\nevent: message\ndata: {"a":1}\n\n'
    b": hb\n\n"
    b'event: gap\ndata: {"first_id":"1732500000000-5"}\n\n'
    b'id: 1732500000001-0\nevent: end\ndata: {"a":"\xc3\xa9\xe2\x82\xac"}\n\n'
)
EXPECTED = [
    SSEMessage("message", '{"a":1}', "1732500000000-0"),
    SSEMessage("gap", '{"first_id":"1732500000000-5"}', None),
    SSEMessage("end", '{"a":"é€"}', "1732500000001-0"),
]


def test_sse_whole_stream() -> None:
    assert SSEParser().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_sse_any_chunking(size: int) -> None:
    # Splits land inside lines, inside "\n\n" and inside multi-byte UTF-8 characters.
    parser = SSEParser()
    got: list[SSEMessage] = []
    for start in range(0, len(STREAM), size):
        got.extend(parser.feed(STREAM[start : start + size]))
    assert got == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_sse_line_endings(newline: bytes) -> None:
    raw = STREAM.replace(b"\n", newline)
    assert SSEParser().feed(raw) == EXPECTED
    parser = SSEParser()
    got = [m for i in range(len(raw)) for m in parser.feed(raw[i : i + 1])]
    assert got == EXPECTED


def test_sse_multiline_data_bom_and_fields() -> None:
    parser = SSEParser()
    got = parser.feed(b"\xef\xbb\xbfdata: a\ndata:b\nunknown: x\nretry: 50\n\n: only comment\n\n")
    assert got == [SSEMessage("message", "a\nb", None, 50)]
    assert parser.retry == 50
    assert parser.feed(b"data: incomplete") == []


def test_sse_frames() -> None:
    assert _sse_frame(EXPECTED[0]) == Event("1732500000000-0", "message", {"a": 1})
    assert _sse_frame(EXPECTED[1]) == Control("gap", "1732500000000-5")
    assert _sse_frame(SSEMessage("reconnect", '{"reason":"shutdown"}', None)) == Control(
        "reconnect", "shutdown"
    )
    assert _sse_frame(SSEMessage("future-thing", "{}", None)) is None
    with pytest.raises(ProtocolViolation):
        _sse_frame(SSEMessage("message", "not json", "1-0"))
    with pytest.raises(ProtocolViolation):
        _sse_frame(SSEMessage("message", "1", None))


def test_parse_event_json() -> None:
    assert parse_event({"id": "5-1", "type": "end", "data": None}) == Event("5-1", "end", None)
    for bad in ({"id": "x", "type": "message"}, {"id": "1-0", "type": "ping"}, [1]):
        with pytest.raises(ProtocolViolation):
            parse_event(bad)


def test_ids_compare_numerically() -> None:
    assert parse_event_id("1732500000000-12") == (1732500000000, 12)
    # As text "999-0" > "1000-0" and "5-10" < "5-9": both wrong.
    assert is_after("1000-0", "999-0")
    assert is_after("5-10", "5-9")
    assert not is_after("5-9", "5-9")
    assert not is_after("5-8", "5-9")
    assert is_after("0-0", None)
    for bad in ("", "1", "1-", "-1", "a-1", "1-1-1", " 1-1"):
        with pytest.raises(ValueError):
            parse_event_id(bad)


def test_backoff_grows_caps_jitters_and_resets() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(7))
    ceilings = []
    for _ in range(6):
        ceiling = backoff.peek()
        delay = backoff.next_delay()
        assert 0.25 <= delay <= ceiling  # full jitter above a floor of initial / 4
        ceilings.append(ceiling)
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.peek() == 1.0
    # Jitter really spreads clients out.
    delays = [Backoff(initial=1.0, rng=random.Random(seed)).next_delay() for seed in range(40)]
    assert len(set(delays)) > 20 and min(delays) == 0.25 and max(delays) > 0.9
    backoff.attempt = 10_000  # no float overflow however long the outage
    assert backoff.next_delay() <= backoff.maximum
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)


def _jwt(claims: dict[str, object]) -> str:
    def b64(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'HS256', 'kid': 'k1'})}.{b64(claims)}.c2ln"


def test_resolve_references() -> None:
    read = _jwt({"ch": "ch_1", "scope": "read", "url": "http://b:1"})
    write = _jwt({"ch": "ch_1", "scope": "write", "url": "http://b:1"})
    channel_token = {"unbroken": 1, "broker": "http://b:1", "channel": "ch_1", "token": write}
    opened = {"id": "ch_1", "read_token": read, "channel_token": channel_token, "heartbeat": 3}

    ref = resolve(read)
    assert (ref.channel_id, ref.token, ref.broker_url) == ("ch_1", read, "http://b:1")
    ref = resolve(channel_token)
    assert (ref.channel_id, ref.token, ref.channel_token) == ("ch_1", write, channel_token)
    assert resolve(json.dumps(channel_token)).token == write
    ref = resolve(json.dumps(opened))
    assert (ref.token, ref.heartbeat, ref.channel_token) == (read, 3.0, channel_token)
    ref = resolve("my-chat.42", read)
    assert (ref.channel_id, ref.token, ref.broker_url) == ("my-chat.42", read, None)
    # A channel may be named like a JWT; without JWT claims it is taken as a name.
    assert resolve("a.b.c", read).channel_id == "a.b.c"
    with pytest.raises(InvalidChannelReference, match="read token"):
        resolve("ch_1")
    with pytest.raises(InvalidChannelReference):
        resolve("not a channel!")
    with pytest.raises(InvalidChannelReference):
        resolve({"something": "else"})


def test_error_types() -> None:
    assert not BrokerError(401, "token_expired", "x").retriable
    assert not BrokerError(410, "channel_gone", "x").retriable
    assert BrokerError(429, "rate_limited", "x").retriable
    assert BrokerError(503, "http_error", "x").retriable
    assert not BrokerError(425, "http_error", "x").retriable
    error = ChannelErrorEvent({"message": "upstream failed", "code": "llm_down"}, "5-0")
    assert (error.message, error.code, error.event_id) == ("upstream failed", "llm_down", "5-0")
    assert "llm_down" in str(error)
    assert ChannelErrorEvent("boom").message == "'boom'"
