"""Finding the external tools some tests need (a browser, node, redis-server, curl), and what a
test does when one is missing: skip with the reason on a developer's machine, fail under CI
(`CI` set, as CI systems do), where .ci/run installs every one of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_chrome() -> str | None:
    """Chromium or Chrome: $CHROME_PATH, Debian's /usr/bin/chromium, then the usual names on
    the PATH. None when there is none."""
    configured = os.environ.get("CHROME_PATH")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return str(DEBIAN_CHROMIUM)
    for name in CHROME_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing(what: str) -> NoReturn:
    """Skip (or, under CI, fail) because `what` is not installed."""
    if in_ci():
        pytest.fail(f"{what} is missing, and CI must run every test: install it in .ci/run")
    pytest.skip(f"{what} is missing (CI installs it)")


def need_tool(name: str, install: str | None = None) -> str:
    """The path of the program `name`, or skip/fail saying how to get it."""
    found = shutil.which(name)
    if found is None:
        missing(f"{name} (apt-get install {install or name})")
    return found


def need_chrome() -> str:
    found = find_chrome()
    if found is None:
        names = ", ".join(CHROME_NAMES)
        missing(f"Chromium or Chrome (CHROME_PATH, /usr/bin/chromium, or {names} on the PATH)")
    return found
