"""The chaos suite's short form: at least 200 faults of every kind (broker kill -9 with resume
on the other broker, Redis kill -9 and restart, cut / half-open / truncated / delayed
connections, readers that stop reading) and not one message lost, duplicated or reordered on
any transport. Long form: `python -m tests.chaos --faults 1000` (docs/reliability.md)."""

from __future__ import annotations

import shutil

import pytest

from tests.chaos.readers import Reader
from tests.chaos.run import TRANSPORTS, Plan, run_chaos


def test_the_counting_catches_loss_duplicates_and_reordering() -> None:
    reader = Reader("sse", {"id": "c", "read_token": "t"}, ["http://x"], total=5)
    for event_id, seq in [("1-0", 1), ("2-0", 2), ("2-0", 2), ("4-0", 4), ("3-0", 3)]:
        reader.record(event_id, "message", {"seq": seq})
    reader.record("5-0", "message", {"seq": 4})  # the same payload stored twice
    assert (reader.duplicated, reader.reordered) == (2, 1)
    assert reader.total - len(reader.seqs) == 1  # seq 5 never came
    assert reader.last_id == "5-0" and not reader.ended


@pytest.mark.timeout(400)
async def test_chaos_short_form() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("the chaos suite needs redis-server")
    report = await run_chaos(Plan(faults=200, seed=7, channels_per_round=4))
    print(report.text())
    assert report.total_faults >= 200
    for kind in ("broker_kill9", "redis_kill9", "cut", "half_open", "truncate", "delay"):
        assert report.faults[kind] > 0, kind
    assert report.faults["slow_reader"] > 0
    assert report.totals() == (0, 0, 0), report.text()
    assert report.clean(), report.text()
    for transport in TRANSPORTS:
        tally = report.tallies[transport]
        assert tally.readers > 0 and tally.received == tally.expected, report.text()
        assert tally.reconnects > 0, f"no fault reached a {transport} reader"
