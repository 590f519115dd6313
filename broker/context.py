"""Everything a request handler needs, built once per broker process and stored on the app."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from broker.config import Settings
from broker.engine.base import Engine
from broker.hub import Hub
from broker.tokens import KeyRing


class OpenRateLimiter:
    """Token buckets per client address for channel opens under the `open` policy."""

    MAX_TRACKED = 100_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, last refill)

    def retry_after(self, address: str, now: float | None = None) -> float:
        """0 when the open may proceed (and is counted), else seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.MAX_TRACKED:
            self._buckets.clear()  # forgetting buckets only ever lets clients through
        self._buckets[address] = (tokens - 1.0, now)
        return 0.0


@dataclass(slots=True)
class BrokerContext:
    settings: Settings
    engine: Engine
    hub: Hub
    keys: KeyRing
    open_limiter: OpenRateLimiter
    # One bucket for all addresses together (key "*"), one second of burst; None: no cap.
    global_open_limiter: OpenRateLimiter | None = None
    started_at: float = field(default_factory=time.time)
    draining: bool = False  # set on shutdown: refuse new readers, tell current ones to reconnect


CONTEXT: web.AppKey[BrokerContext] = web.AppKey("unbroken_context", BrokerContext)


def context_of(request: web.Request) -> BrokerContext:
    return request.app[CONTEXT]
