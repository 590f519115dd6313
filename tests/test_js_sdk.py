"""Runs the JavaScript SDK's own test files (client_sdk/js/test/*.test.mjs) under pytest.

Each file is one parametrized case, run with `node --test <file>`, so a failure points at the
area that broke (decoder, state machine, real-broker e2e, runtime fakes, real Chromium, package).
The SDK is installed (`npm ci`, only when node_modules is missing) and built once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parent.parent / "client_sdk" / "js"
TEST_FILES = sorted(p.name for p in (JS_DIR / "test").glob("*.test.mjs"))


@pytest.fixture(scope="session")
def js_built() -> Path:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm are not on PATH: the JS SDK tests need Node.js >= 18")
    if not (JS_DIR / "node_modules").is_dir():
        _run([npm, "ci", "--no-audit", "--no-fund"], "npm ci")
    _run([npm, "run", "build"], "npm run build")
    return JS_DIR


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@pytest.mark.parametrize("test_file", TEST_FILES)
def test_js_sdk(js_built: Path, test_file: str) -> None:
    env = dict(os.environ)
    env.setdefault("NODE_OPTIONS", "")
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
