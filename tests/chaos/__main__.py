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
    parser.add_argument("--broker-kill-every", type=float, default=8.0, help="seconds (8)")
    parser.add_argument("--redis-restart-every", type=float, default=25.0, help="seconds (25)")
    args = parser.parse_args(argv)
    plan = Plan(
        faults=args.faults,
        seed=args.seed,
        broker_kill_every=args.broker_kill_every,
        redis_restart_every=args.redis_restart_every,
    )
    report = asyncio.run(run_chaos(plan))
    print(report.text())
    return 0 if report.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
