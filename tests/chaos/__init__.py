"""A chaos suite: readers on every transport and idempotent writers, through fault-injecting
proxies, against two Redis-engine brokers and a Redis that are killed and restarted, counting
what each reader lost, got twice or got out of order.

Short form in the test suite (tests/test_chaos.py); long form:

    python -m tests.chaos --faults 1000

See docs/reliability.md for what it injects and the figures.
"""
