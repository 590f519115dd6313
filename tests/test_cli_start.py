"""`python -m broker serve` start-up failures, as a new user meets them: one clear line on stderr,
a non-zero exit, no traceback, and no "broker on" line unless the broker really listens."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from broker.config import Settings
from broker.engine.base import Limits
from tests.broker_process import ROOT, BrokerProcess
from tests.redis_server import free_port

SECRET = "start:start-test-secret"


async def serve(*args: str, timeout: float = 20.0) -> tuple[int, str, str]:
    """Run `serve` and wait for it to exit: (exit code, stdout, stderr). A broker that starts
    instead of refusing is killed and fails the test."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(
            f"serve did not refuse to start:\n{out.decode()}{err.decode()}"
        ) from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "broker on" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@contextmanager
def held_port(*, reuse_port: bool) -> Iterator[int]:
    """A port some other process (here: this test) listens on."""
    with socket.socket() as sock:
        if reuse_port:  # what another broker's --workers sockets look like
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_a_port_in_use_is_one_line_and_a_non_zero_exit() -> None:
    with held_port(reuse_port=False) as port:
        code, out, err = await serve("--port", str(port), "--secret", SECRET)
    assert code != 0 and "broker on" not in out
    line = one_line(err)
    assert f"127.0.0.1:{port}" in line and "--port" in line


async def test_an_unreachable_redis_is_one_line_and_a_non_zero_exit() -> None:
    dead = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    for workers in ("1", "2"):
        code, out, err = await serve(
            "--port", str(free_port()), "--redis", dead, "--secret", SECRET, "--workers", workers
        )
        assert code != 0 and "broker on" not in out, (workers, out, err)
        line = one_line(err)
        assert "Redis" in line and "--redis" in line, line
        assert "hunter2" not in line and "127.0.0.1" in line  # the URL, without its password


async def test_workers_refuse_a_port_another_process_holds(redis_url: str) -> None:
    with held_port(reuse_port=True) as port:
        code, out, err = await serve(
            "--port", str(port), "--redis", redis_url, "--secret", SECRET, "--workers", "2"
        )
    assert code != 0 and "broker on" not in out
    assert f"127.0.0.1:{port}" in one_line(err)


async def test_the_broker_on_line_comes_once_when_it_listens(redis_url: str) -> None:
    workers_args = ("--redis", redis_url, "--secret", SECRET, "--workers", "2")
    for args in (("--secret", SECRET), workers_args):
        async with BrokerProcess(*args) as broker, aiohttp.ClientSession() as http:
            async with http.get(broker.url + "/healthz") as response:
                assert response.status == 200
            workers = 2 if "--workers" in args else 1

            async def announced(broker: BrokerProcess = broker, workers: int = workers) -> bool:
                return broker.output().count(f"unbroken broker on {broker.url}") == workers

            for _ in range(100):  # each worker logs once, right after its site started
                if await announced():
                    break
                await asyncio.sleep(0.05)
            assert await announced(), broker.output()
            assert "Traceback" not in broker.output()


# --- the first five minutes: GET /, --help, channels --limit -----------------------------------


async def test_the_root_url_says_what_this_is_and_links_what_works() -> None:
    async with BrokerProcess("--secret", SECRET) as broker, aiohttp.ClientSession() as http:
        async with http.get(broker.url + "/") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            page = await response.text()
        assert "<title>Unbroken broker</title>" in page
        links = re.findall(r'href="([^"]+)"', page)
        assert {"/dashboard", "/openapi.json", "/healthz", "/readyz"} <= set(links)
        for link in links:  # every link on the page works on this broker
            async with http.get(broker.url + link) as response:
                assert response.status == 200, link
        for doc in ("README.md", "docs/protocol.md", "docs/operations.md"):
            assert doc in page and (ROOT / doc).is_file()


def test_serve_help_has_a_description_and_the_default_of_every_option() -> None:
    from broker.cli import build_parser

    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "Run the Unbroken broker" in text and "UNBROKEN_" in text
    for expected in (
        "default: 127.0.0.1",
        "default: 8080",
        "default: memory",
        "default: 15",
        "default: 200",
        "default: 100000",
        "default: unbroken",
        "default: off",
    ):
        assert expected in text, expected
    # Every option that sets a setting names its default, so none can be forgotten later.
    serve = next(
        choice
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, choice in action.choices.items()
        if name == "serve"
    )
    settings = {*Settings.__dataclass_fields__, *Limits.__dataclass_fields__}
    for action in serve._actions:
        if action.dest in settings:
            shown = serve._get_formatter()._get_help_string(action)
            assert re.search(r"\bdefault\b", shown), (action.option_strings, shown)
            # ...and --help prints it (compared without spaces: argparse wraps at hyphens too)
            assert "".join(shown.split()) in "".join(text.split()), shown


async def test_channels_command_takes_a_limit_and_an_admin_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "admin"
    token_file.write_text("limit-admin\n")
    async with (
        BrokerProcess("--secret", SECRET, "--admin-token-file", str(token_file)) as broker,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(3):
            async with http.post(broker.url + "/v1/channels", json={}) as response:
                assert response.status == 201

        def channels(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "broker", "channels", "--broker", broker.url, *args],
                cwd=ROOT, capture_output=True, text=True, timeout=60,
                env={**os.environ, "UNBROKEN_ADMIN_TOKEN_FILE": str(token_file)},
            )  # fmt: skip

        limited = await asyncio.to_thread(channels, "--limit", "2")
        assert limited.returncode == 0, limited.stderr
        assert len(limited.stdout.splitlines()) == 2
        everything = await asyncio.to_thread(channels)
        assert len(everything.stdout.splitlines()) == 3


# --- compose.yaml ---------------------------------------------------------------------------------


def test_compose_gives_the_broker_an_admin_token_and_time_to_drain() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    broker = compose["services"]["broker"]
    env = broker["environment"]
    # From the environment / a .env file, with a default so `docker compose up` works at once.
    assert re.fullmatch(r"\$\{UNBROKEN_ADMIN_TOKEN:-[^}]+\}", env["UNBROKEN_ADMIN_TOKEN"])
    assert re.fullmatch(r"\$\{UNBROKEN_SECRET:-k1:[^}]+\}", env["UNBROKEN_SECRET"])
    shutdown = float(env.get("UNBROKEN_SHUTDOWN_TIMEOUT", Settings().shutdown_timeout))
    grace = re.fullmatch(r"(\d+)s", broker["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) > shutdown
    assert "/readyz" in " ".join(broker["healthcheck"]["test"])
