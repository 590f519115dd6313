"""The dashboard in a real Chromium against a broker without an admin token: admin routes refuse
everyone (issue 7.2), and the page says so instead of offering a login that cannot work."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.broker_process import ROOT, BrokerProcess
from tests.tools import need_chrome, need_tool

DRIVER = ROOT / "tests" / "browser" / "dashboard_disabled.mjs"


async def test_dashboard_says_admin_is_disabled_without_an_admin_token(
    browser_driver: Path,
) -> None:
    chrome, node = need_chrome(), need_tool("node", "nodejs")
    async with BrokerProcess("--engine", "memory", "--secret", "d:dashboard-secret") as broker:
        driver = await asyncio.create_subprocess_exec(
            node, str(DRIVER), broker.url, env={**os.environ, "CHROME_PATH": chrome},
            cwd=browser_driver, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(driver.communicate(), 60)
        assert driver.returncode == 0, err.decode()
        shown = json.loads(out.decode().strip().splitlines()[-1])
    assert shown["login"] is True
    assert "disabled" in shown["error"] and "UNBROKEN_ADMIN_TOKEN" in shown["error"]
