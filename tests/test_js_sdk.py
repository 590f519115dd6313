"""Runs the JavaScript SDK's own test files (client_sdk/js/test/*.test.mjs) under pytest.

Each file is one parametrized case, run with `node --test <file>`, so a failure points at the
area that broke (decoder, state machine, real-broker e2e, runtime fakes, real Chromium, package).
The SDK is installed (`npm ci`, only when node_modules is missing) and built once per session
by the `js_built` fixture in conftest.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.tools import find_chrome, need_chrome

JS_DIR = Path(__file__).resolve().parent.parent / "client_sdk" / "js"
TEST_FILES = sorted(p.name for p in (JS_DIR / "test").glob("*.test.mjs"))


@pytest.mark.parametrize("test_file", TEST_FILES)
def test_js_sdk(js_built: Path, test_file: str) -> None:
    env = dict(os.environ)
    env.setdefault("NODE_OPTIONS", "")
    # node --test reports a skipped test as a pass (exit 0): decide about the browser here.
    chrome = need_chrome() if "browser" in test_file else find_chrome()
    if chrome is not None:
        env["CHROME_PATH"] = chrome
    proc = subprocess.run(
        ["node", "--test", "--test-reporter=spec", f"test/{test_file}"],
        cwd=js_built,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, (
        f"node --test test/{test_file} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
