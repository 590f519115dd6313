"""`python -m client_sdk` (tail, open) as a user runs it: a subprocess against a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from client_sdk import create_channel, subscribe
from tests.client_sdk_support import REPO, Proxy, Writer, broker_process, free_port
from worker.channel import Channel as WorkerChannel


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with broker_process() as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def proxy(broker: str) -> AsyncIterator[Proxy]:
    proxy = await Proxy(URL(broker).port or 80).start()
    yield proxy
    await proxy.close()


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client_sdk", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await start_cli(*args)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def read_lines(proc: asyncio.subprocess.Process, count: int) -> list[Any]:
    assert proc.stdout is not None
    lines = []
    for _ in range(count):
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line, "tail closed its output early"
        lines.append(json.loads(line))
    return lines


async def test_open_prints_tokens(broker: str) -> None:
    code, out, err = await run_cli("open", broker)
    assert code == 0, err
    info = json.loads(out)
    assert info["id"] and info["read_token"] and info["state"] == "open"
    assert set(info["channel_token"]) >= {"unbroken", "broker", "channel", "token"}
    assert info["channel_token"]["channel"] == info["id"]

    name = f"cli-open-{free_port()}"
    code, out, err = await run_cli("open", broker, "--name", name, "--compact")
    assert code == 0 and json.loads(out)["id"] == name and len(out.splitlines()) == 1
    code, out, err = await run_cli("open", broker, "--name", name)
    assert code == 3 and out == ""
    assert "channel_exists" in err and "next:" in err and "Traceback" not in err


async def test_tail_prints_messages_and_exits_0_on_end(
    broker: str, session: aiohttp.ClientSession
) -> None:
    info = await create_channel(session, broker)
    # The channel token as a backend gets it (JSON text), used by the worker library.
    backend = WorkerChannel.from_token(json.dumps(info["channel_token"]), broker_url=broker)
    await backend.write({"n": 1})
    proc = await start_cli("tail", broker, json.dumps(info))
    assert await read_lines(proc, 1) == [{"n": 1}]
    for value in ["two", None, [3], "é€"]:
        await backend.write(value)
    await backend.end({"reason": "done"})
    await backend.close()
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err
    assert [json.loads(line) for line in out.decode().splitlines()] == ["two", None, [3], "é€"]
    assert f"channel {info['id']} ended" in err.decode()


async def test_tail_reports_reconnects_on_stderr_and_loses_nothing(
    broker: str, session: aiohttp.ClientSession, proxy: Proxy
) -> None:
    info = await create_channel(session, broker)
    writer = Writer(session, info["channel_token"])
    await writer.stream(0, 3, finish=False)
    proc = await start_cli(
        "tail", proxy.url, info["id"], "--token", info["read_token"], "--transport", "sse"
    )
    assert await read_lines(proc, 3) == [{"i": i} for i in range(3)]
    proxy.cut()
    await writer.stream(3, 10, end=None)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err
    assert [json.loads(line) for line in out.decode().splitlines()] == [
        {"i": i} for i in range(3, 10)
    ]
    stderr = err.decode()
    assert "reconnecting via sse" in stderr and "resuming after" in stderr


async def test_tail_pretty_events_and_from(broker: str, session: aiohttp.ClientSession) -> None:
    info = await create_channel(session, broker)
    writer = Writer(session, info["channel_token"])
    ids = await writer.messages([{"i": 0}, {"i": 1}, {"i": 2}])
    await writer.end("bye")
    code, out, err = await run_cli(
        "tail", broker, info["read_token"], "--events", "--from", ids[0], "--transport", "ws"
    )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["id"] for e in events[:2]] == ids[1:]
    assert [e["type"] for e in events] == ["message", "message", "end"]
    assert events[-1]["data"] == "bye"
    code, out, err = await run_cli("tail", broker, info["read_token"], "--pretty")
    assert code == 0, err
    assert out.startswith(f"# {ids[0]}\n{{\n") and '  "i": 2\n}' in out


async def test_tail_reports_a_cancelled_channel(
    broker: str, session: aiohttp.ClientSession
) -> None:
    info = await create_channel(session, broker)
    writer = Writer(session, info["channel_token"])
    ids = await writer.messages(["partial"])
    async with subscribe(broker, info, session=session) as ch:
        answer = await ch.cancel(reason := "user pressed stop")
    code, out, err = await run_cli("tail", broker, info["read_token"], "--events")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events == [
        {"id": ids[0], "type": "message", "data": "partial"},
        {"id": answer["last_event_id"], "type": "cancelled", "data": {"reason": reason}},
    ]
    assert "was cancelled: user pressed stop" in err


async def test_tail_exits_1_on_error_event(broker: str, session: aiohttp.ClientSession) -> None:
    info = await create_channel(session, broker)
    writer = Writer(session, info["channel_token"])
    await writer.messages(["partial"])
    await writer.error({"message": "upstream failed", "code": "llm_down"})
    code, out, err = await run_cli("tail", broker, json.dumps(info["channel_token"]))
    assert code == 1
    assert out.splitlines() == ['"partial"']
    assert "llm_down" in err and "upstream failed" in err and "Traceback" not in err


@pytest.mark.parametrize("transport", ["sse", "ws", "poll"])
async def test_tail_refused_exits_3_with_advice(
    broker: str, session: aiohttp.ClientSession, transport: str
) -> None:
    info = await create_channel(session, broker)
    code, out, err = await run_cli(
        "tail", broker, info["id"], "--token", info["read_token"] + "x", "--transport", transport
    )
    assert code == 3 and out == ""
    assert "token_invalid" in err and "next:" in err and "Traceback" not in err
    assert "reconnecting" not in err


async def test_tail_usage_and_unreachable_errors(broker: str) -> None:
    code, _, err = await run_cli("tail", broker, "some-channel")
    assert code == 2 and "--token" in err and "Traceback" not in err
    code, _, err = await run_cli("tail", broker, "some-channel", "--token", "t", "--from", "x")
    assert code == 2 and "event id" in err and "Traceback" not in err
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run_cli("tail", dead, "c", "--token", "t", "--max-retries", "1")
    assert code == 4
    assert "reconnecting" in err and "broker is running" in err and "Traceback" not in err
    code, _, err = await run_cli("open", dead)
    assert code == 4 and "cannot reach" in err and "Traceback" not in err


def test_cli_module_imports_without_running() -> None:
    # `python -m client_sdk --help` style entry points must not start loops at import.
    import client_sdk.cli

    assert client_sdk.cli.build_parser().parse_args(["open", "http://x"]).command == "open"
    with pytest.raises(SystemExit):
        client_sdk.cli.build_parser().parse_args(["tail"])
