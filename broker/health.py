"""Liveness and readiness: `/healthz` (is the process serving, and how is its engine) and
`/readyz` (should a load balancer send traffic here: not while draining or while the engine's
storage is unreachable).

The engine is probed with one cheap PING, bounded by PROBE_TIMEOUT and cached for PROBE_TTL, so
a health checker polling every few milliseconds costs Redis at most one PING per second.

The same probe gates the API: while the last PING failed, `/v1/...` requests answer 503
engine_unavailable at once. Without the gate each request would wait out the engine's failover
retries (seconds) during an outage that is already known, piling up connections and clients.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.context import context_of
from broker.engine.base import Engine
from broker.errors import unavailable

PROBE_TIMEOUT = 0.5  # seconds a PING may take before the engine counts as unreachable
PROBE_TTL = 1.0  # seconds a probe result is reused


class EngineProbe:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ok = True
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def ok(self) -> bool:
        if time.monotonic() - self._checked_at < PROBE_TTL:
            return self._ok  # the hot path: no lock, no PING
        async with self._lock:  # concurrent checks share one PING
            now = time.monotonic()
            if now - self._checked_at >= PROBE_TTL:
                try:
                    await asyncio.wait_for(self.engine.ping(), PROBE_TIMEOUT)
                    self._ok = True
                except Exception:  # any failure to answer a PING is "unreachable"
                    self._ok = False
                self._checked_at = time.monotonic()
            return self._ok


PROBE: web.AppKey[EngineProbe] = web.AppKey("unbroken_engine_probe", EngineProbe)


def setup(app: web.Application, engine: Engine) -> None:
    app[PROBE] = EngineProbe(engine)
    app.middlewares.append(_gate)  # inside error_middleware, which renders the 503
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


class EngineDown(Exception):
    """The engine's last PING failed."""


async def require_engine(request: web.Request) -> None:
    """Raise 503 engine_unavailable while the engine's last PING (at most PROBE_TTL old) failed."""
    if not await request.app[PROBE].ok():
        raise unavailable(EngineDown("the engine's storage did not answer a PING"))


@web.middleware
async def _gate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # A WebSocket upgrade is refused by its handler (a `rejected` frame and close code 4503:
    # browsers cannot read the status of a failed upgrade), which calls require_engine itself.
    if request.path.startswith("/v1/") and request.headers.get("Upgrade", "").lower() != (
        "websocket"
    ):
        await require_engine(request)
    return await handler(request)


async def _state(request: web.Request) -> tuple[dict[str, object], bool]:
    ctx = context_of(request)
    engine_ok = await request.app[PROBE].ok()
    status = "draining" if ctx.draining else "ok" if engine_ok else "degraded"
    body: dict[str, object] = {
        "status": status,
        "engine": ctx.engine.name,
        "engine_ok": engine_ok,
        "pid": os.getpid(),
    }
    return body, engine_ok and not ctx.draining


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves, even with its engine down (restarting the broker would not
    bring Redis back); `engine_ok` says how the engine is. 503 only while draining."""
    body, _ = await _state(request)
    return web.json_response(body, status=503 if body["status"] == "draining" else 200)


async def readyz(request: web.Request) -> web.Response:
    body, ready = await _state(request)
    return web.json_response(body, status=200 if ready else 503)
