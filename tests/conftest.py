from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings
from tests.redis_server import RestartableRedis, private_redis
from tests.support import TEST_ADMIN, TEST_SECRET, Broker, redis_settings, running_broker
from tests.tools import in_ci, missing


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis started for this test session; skips the test when none can be had."""
    with private_redis() as url:
        if url is None:
            missing("redis-server (apt-get install redis-server; or UNBROKEN_TEST_REDIS_URL)")
        yield url


@pytest.fixture
def restartable_redis() -> Iterator[RestartableRedis]:
    """A private redis-server, started, that the test can stop, kill, freeze and restart."""
    server = RestartableRedis()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Broker settings for each engine: a test that takes them runs on both."""
    if request.param == "redis":
        return redis_settings(request.getfixturevalue("redis_url"))
    return Settings()


@pytest.fixture
def no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker library configured by its arguments only, whatever the shell exports (worker
    test modules use it for every test: `pytestmark = pytest.mark.usefixtures(...)`)."""
    for name in ("UNBROKEN_SECRET", "UNBROKEN_BROKER_URL", "UNBROKEN_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["http", "redis"])
async def path(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, dict[str, Any]]]:
    """A broker (admin token TEST_ADMIN) and the worker options that write to it over HTTP, or
    straight to its Redis."""
    if request.param == "http":
        async with running_broker(admin_token=TEST_ADMIN) as broker:
            yield broker, {"broker_url": broker.url}
    else:
        redis_url = request.getfixturevalue("redis_url")
        settings = redis_settings(redis_url).with_overrides(admin_token=TEST_ADMIN)
        async with running_broker(settings) as broker:
            options = {"redis_url": redis_url, "redis_prefix": settings.redis_prefix}
            yield broker, {**options, "secret": TEST_SECRET}


ROOT = Path(__file__).resolve().parent.parent


def npm_install(folder: Path) -> str:
    """`npm ci` in `folder` when its node_modules is missing; skips when npm is absent."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        missing("Node.js >= 18 with npm (apt-get install nodejs npm)")
    if not (folder / "node_modules").is_dir():
        run_or_fail([npm, "ci", "--no-audit", "--no-fund"], folder, "npm ci")
    return npm


def run_or_fail(command: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{what} in {cwd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def js_built() -> Path:
    """client_sdk/js installed and built (once per session)."""
    folder = ROOT / "client_sdk" / "js"
    npm = npm_install(folder)
    run_or_fail([npm, "run", "build"], folder, "npm run build")
    return folder


@pytest.fixture(scope="session")
def browser_driver() -> Path:
    """tests/browser (playwright-core, driving Debian's Chromium) installed."""
    folder = ROOT / "tests" / "browser"
    npm_install(folder)
    return folder


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI every tool is installed (.ci/run), so a skip there hides a broken setup or a
    test that cannot run: it fails instead, with the skip's reason."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"
