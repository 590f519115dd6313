"""Exponential backoff with jitter for reconnects.

Jitter spreads the reconnects of many clients that lost the same broker at the same moment, so
they do not all come back in the same millisecond.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays `initial * factor**n`, capped at `maximum`, each drawn from
    `[(1 - jitter) * d, d]`. `reset()` after a connection made progress."""

    initial: float = 0.25
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 <= initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be within [0, 1]")

    def peek(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow a float after ~1000 attempts.
        exponent = min(self.attempt, 64)
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def next_delay(self) -> float:
        ceiling = self.peek()
        self.attempt += 1
        return ceiling - self.rng.uniform(0.0, self.jitter * ceiling)

    def reset(self) -> None:
        self.attempt = 0
