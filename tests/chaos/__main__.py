"""`python -m tests.chaos [--faults N] [--seed S]`: the long form of the chaos suite."""

from __future__ import annotations

import argparse
import asyncio
import sys

from tests.chaos.run import Plan, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--faults", type=int, default=1000, help="faults to inject (1000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    args = parser.parse_args(argv)
    report = asyncio.run(run_chaos(Plan(faults=args.faults, seed=args.seed)))
    print(report.text())
    return 0 if report.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
