"""The side-by-side benchmark harness runs end to end (its figures are not checked: never a
timed test). Its smallest form, against the memory engine only, prints every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_compare_prints_every_row_for_the_memory_engine() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.compare import QUICK, rows

    done = subprocess.run(
        [sys.executable, "bench/compare.py", "--quick", "--targets", "memory"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split(" | ")[0].lstrip("| "): line for line in done.stdout.splitlines()}
    for row in rows(QUICK):
        if row.redis_only:
            continue
        assert row.label in lines, f"no row {row.label!r} in:\n{done.stdout}"
        memory_cell = lines[row.label].split(" | ")[1]
        assert memory_cell not in ("", "-"), f"no memory figure for {row.label!r}"
