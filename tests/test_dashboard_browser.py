"""The dashboard in a real Chromium: a real broker, a worker writing, the page showing it live.

Chromium or Chrome (tests/tools.py finds it: CHROME_PATH, /usr/bin/chromium, or on the PATH) is
driven by playwright-core from tests/browser (`npm ci` there). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest

from tests.broker_process import ROOT, BrokerProcess
from tests.tools import need_chrome, need_tool
from worker.channel import Channel

DRIVER = ROOT / "tests" / "browser" / "dashboard.mjs"
ARTIFACTS = ROOT / "test-artifacts"
SDK_BUILD = ROOT / "client_sdk" / "js" / "dist" / "esm" / "index.js"
ADMIN_TOKEN = "dashboard-test-admin"


@pytest.mark.parametrize("mode", ["sdk", "eventsource"])
async def test_dashboard_lists_channel_and_tails_messages(
    mode: str, browser_driver: Path, request: pytest.FixtureRequest
) -> None:
    chrome = need_chrome()
    node = need_tool("node", "nodejs")
    if mode == "sdk":
        request.getfixturevalue("js_built")  # the dashboard serves the built SDK
        assert SDK_BUILD.exists(), f"npm run build did not produce {SDK_BUILD}"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / ("dashboard.png" if mode == "sdk" else f"dashboard-{mode}.png")
    async with BrokerProcess("--engine", "memory", "--admin-token", ADMIN_TOKEN) as broker:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                broker.url + "/v1/channels", json={"name": f"chat-{mode}-42"}
            ) as response:
                assert response.status == 201
                opened = await response.json()
        worker = Channel.from_token(opened["channel_token"], broker_url=broker.url)
        # One message before the page opens: it must come from the backfill, the rest live.
        first = await worker.write({"text": "hello from the worker", "n": 0})

        driver = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            broker.url,
            ADMIN_TOKEN,
            opened["id"],
            str(screenshot),
            mode,
            env={**os.environ, "CHROME_PATH": chrome},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert driver.stdout is not None and driver.stderr is not None
            line = await asyncio.wait_for(driver.stdout.readline(), 60)
            if line.strip() != b"ready":
                pytest.fail(f"driver failed: {line!r}\n{(await driver.stderr.read()).decode()}")
            ids = [first]
            for n in range(1, 4):
                ids.append(await worker.write({"text": f"token {n}", "n": n}))
            ids.append(await worker.end({"done": True}))
            await worker.close()
            out, err = await asyncio.wait_for(driver.communicate(), 60)
        finally:
            if driver.returncode is None:
                driver.kill()
                await driver.wait()
        assert driver.returncode == 0, err.decode()
        result = json.loads(out.decode().strip().splitlines()[-1])

    assert result["problems"] == []
    expected_mode = "live · JS SDK" if mode == "sdk" else "live · EventSource"
    assert result["tailMode"].startswith(f"({expected_mode}"), result["tailMode"]
    assert opened["id"] in result["listed"] and "open" in result["listed"]
    tail = result["tail"]
    # Every event exactly once, in order: the backfilled one and the live ones.
    assert [row["id"] for row in tail] == ids
    assert [row["type"] for row in tail] == ["message"] * 4 + ["end"]
    assert json.loads(tail[0]["data"]) == {"text": "hello from the worker", "n": 0}
    assert json.loads(tail[3]["data"]) == {"text": "token 3", "n": 3}
    assert json.loads(tail[4]["data"]) == {"done": True}
    assert "ended" in result["info"]
    assert screenshot.stat().st_size > 10_000
