"""The aiohttp application: routes, CORS, and the lifecycle of engine and hub."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from broker import api, health, ops
from broker.config import Settings
from broker.context import CONTEXT, BrokerContext, OpenRateLimiter
from broker.engine.base import Engine
from broker.errors import error_middleware
from broker.hub import Hub
from broker.tokens import KeyRing
from broker.transports import poll, sse, ws

log = logging.getLogger("unbroken")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Authorization, Content-Type, Last-Event-ID, Idempotency-Key, Unbroken-Writer, Unbroken-Seq"
    ),
    "Access-Control-Max-Age": "86400",
    "Access-Control-Expose-Headers": "Unbroken-Heartbeat",
}
# Cross-origin access is for the public channel API only. Admin data (listing, inspect, stats,
# metrics, read-token minting) gets no CORS headers and no preflight, so a web page the operator
# happens to open cannot read it with the operator's network position or credentials.
CORS_PATHS = ("/healthz", "/readyz", "/openapi.json")


def cors_allowed(method: str, path: str) -> bool:
    if path.startswith("/v1/channels/"):
        return True
    if path == "/v1/channels":
        return method == "POST"  # GET /v1/channels is the admin listing
    return path in CORS_PATHS


def _cors_method(request: web.Request) -> str:
    if request.method == "OPTIONS":
        return request.headers.get("Access-Control-Request-Method", "OPTIONS").upper()
    return request.method


def create_engine(settings: Settings) -> Engine:
    if settings.engine == "redis":
        from broker.engine.redis import RedisEngine

        return RedisEngine(
            settings.limits,
            url=settings.redis_url,
            prefix=settings.redis_prefix,
            durable_replicas=settings.durable_replicas if settings.durable_writes else None,
            durable_timeout_ms=settings.durable_timeout,
        )
    from broker.engine.memory import MemoryEngine

    return MemoryEngine(settings.limits)


def key_ring(settings: Settings) -> KeyRing:
    if settings.secret:
        return KeyRing.parse(settings.secret)
    log.warning(
        "no UNBROKEN_SECRET set: tokens are signed with a random key and die with this process"
    )
    return KeyRing({"dev": secrets.token_bytes(32)})


@web.middleware
async def _preflight(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # Answered before routing, so unknown paths still get 404 for other methods.
    if (
        request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
        and cors_allowed(_cors_method(request), request.path)
    ):
        return web.Response(status=204)
    return await handler(request)


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    if not cors_allowed(_cors_method(request), request.path):
        return
    for name, value in CORS_HEADERS.items():
        response.headers.setdefault(name, value)


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    settings.validate()
    if settings.admin_open:
        log.warning(
            "admin routes are open (--admin-open): anyone who can reach this port can list "
            "channels, read metrics and mint read tokens; use it for local development only"
        )
    app = web.Application(
        middlewares=[_preflight, error_middleware], client_max_size=settings.max_body_bytes
    )
    engine = engine or create_engine(settings)
    hub = Hub(engine, settings.max_pending_bytes, settings.heartbeat, settings.stall_timeout)
    app[CONTEXT] = BrokerContext(
        settings=settings,
        engine=engine,
        hub=hub,
        keys=key_ring(settings),
        open_limiter=OpenRateLimiter(settings.open_rate, settings.open_burst),
        global_open_limiter=OpenRateLimiter(
            settings.max_open_rate, max(1, int(settings.max_open_rate))
        )
        if settings.max_open_rate > 0
        else None,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.close()

    async def drain(app: web.Application) -> None:
        # Runs on SIGTERM before aiohttp waits for handlers: stop taking readers and tell the
        # connected ones to reconnect (to another broker) from their last id.
        app[CONTEXT].draining = True
        for subscriber in hub.all_subscribers():
            subscriber.close("shutdown")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)
    app.on_response_prepare.append(_add_cors)
    app.router.add_routes(
        [
            web.post("/v1/channels", api.open_channel),
            web.get("/v1/channels", api.list_channels),
            web.get("/v1/channels/{channel_id}", api.channel_status),
            web.get("/v1/admin/channels/{channel_id}", api.inspect_channel),
            web.delete("/v1/channels/{channel_id}", api.delete_channel),
            web.post("/v1/channels/{channel_id}/messages", api.write_messages),
            web.post("/v1/channels/{channel_id}/end", api.end_channel),
            web.post("/v1/channels/{channel_id}/error", api.error_channel),
            web.post("/v1/channels/{channel_id}/cancel", api.cancel_channel),
            web.post("/v1/channels/{channel_id}/heartbeat", api.writer_heartbeat),
            web.get("/v1/channels/{channel_id}/events", sse.events, allow_head=False),
            web.get("/v1/channels/{channel_id}/stream", sse.stream, allow_head=False),
            web.get("/v1/channels/{channel_id}/ws", ws.websocket, allow_head=False),
            web.get("/v1/channels/{channel_id}/poll", poll.poll, allow_head=False),
        ]
    )
    health.setup(app, engine)  # /healthz, /readyz
    ops.setup(app)  # /metrics, /openapi.json, /dashboard, admin stats; counts HTTP errors
    return app
