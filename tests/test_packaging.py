"""The repository's own promises: compose.yaml is valid, lint and types are clean, the CLI runs."""

from __future__ import annotations

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
