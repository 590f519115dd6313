"""Runs the JavaScript SDK's own test files (client_sdk/js/test/*.test.mjs) under pytest.

Each file is one parametrized case, run with `node --test <file>`, so a failure points at the
area that broke (decoder, state machine, real-broker e2e, runtime fakes, real Chromium, package).
The SDK is installed (`npm ci`, only when node_modules is missing) and built once per session
by the `js_built` fixture in conftest.py.
"""

from __future__ import annotations

import os
import re
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
    # node exits 0 when its tests skip: a file whose tests skipped must not read as PASSED.
    skipped = re.search(r"^\S* ?skipped (\d+)$", proc.stdout, re.MULTILINE)
    if skipped and int(skipped.group(1)) > 0:
        lines = proc.stdout.splitlines()
        reasons = sorted({line.split("# ", 1)[-1] for line in lines if "\ufe63" in line})
        pytest.skip(f"{skipped.group(1)} node tests in {test_file} skipped: {'; '.join(reasons)}")
