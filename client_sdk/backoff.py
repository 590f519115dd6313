"""Exponential backoff with "full jitter" for reconnects, the same as the JS SDK's.

Attempt n waits a random delay in `[initial / 4, min(maximum, initial * 2**n)]` (the AWS
architecture blog's full jitter, with a floor). Jitter spreads the reconnects of many clients
that lost the same broker at the same moment, so they do not all come back in lockstep; the floor
keeps a flapping connection from spinning. tests/conformance/backoff.json holds the vectors both
clients are tested against.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays in seconds. `reset()` after a connection made progress."""

    initial: float = 0.5
    maximum: float = 20.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 <= initial <= maximum")

    def peek(self) -> float:
        """The ceiling of the next delay."""
        # min() before the power would overflow a float after ~1000 attempts.
        exponent = min(self.attempt, 64)
        return float(min(self.maximum, self.initial * 2.0**exponent))

    def next_delay(self) -> float:
        ceiling = self.peek()
        self.attempt += 1
        return max(self.initial / 4, self.rng.random() * ceiling)

    def reset(self) -> None:
        self.attempt = 0
