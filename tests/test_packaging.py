"""The repository's own promises: compose.yaml is valid, lint and types are clean, the CLI runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_compose_file_is_valid() -> None:
    if shutil.which("docker-compose"):
        result = _run("docker-compose", "-f", "compose.yaml", "config", "--quiet")
    elif _run("docker", "compose", "version").returncode == 0:
        result = _run("docker", "compose", "-f", "compose.yaml", "config", "--quiet")
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    assert result.returncode == 0, result.stderr


def test_ruff_is_clean() -> None:
    result = _run(
        sys.executable, "-m", "ruff", "check", "broker", "worker", "client_sdk", "tests", "bench"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_help_and_clear_errors() -> None:
    assert "serve" in _run(sys.executable, "-m", "broker", "--help").stdout
    refused = _run(sys.executable, "-m", "broker", "serve", "--workers", "2")
    assert refused.returncode == 2 and "redis engine" in refused.stderr
    unreachable = _run(sys.executable, "-m", "broker", "channels", "--broker", "http://127.0.0.1:9")
    assert unreachable.returncode != 0 and "is it running" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


async def test_channels_and_inspect_commands_against_a_running_broker() -> None:
    import asyncio

    from tests.support import running_broker
    from worker.channel import Channel

    async with running_broker(admin_token="cli-admin") as broker:
        opened = await broker.open(name="inspect-me")
        async with Channel.from_token(opened["channel_token"], broker_url=broker.url) as channel:
            await channel.write_many([{"n": 1}, {"n": 2}])

        async def cli(*args: str) -> tuple[int, str]:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "broker", *args, "--broker", broker.url,
                "--admin-token", "cli-admin",
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await process.communicate()
            return await process.wait(), output.decode()

        code, listing = await cli("channels")
        assert code == 0 and "inspect-me\tended\t3 messages" in listing
        code, detail = await cli("inspect", "inspect-me", "--tail", "2")
        assert code == 0
        shown = json.loads(detail)
        assert shown["state"] == "ended"
        assert [e["data"] for e in shown["events"]] == [{"n": 2}, None]
        code, missing = await cli("inspect", "no-such-channel")
        assert code != 0 and "channel_not_found" in missing
