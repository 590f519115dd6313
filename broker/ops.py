"""Operator routes: Prometheus metrics, the OpenAPI document, the dashboard and its JSON.

`setup(app)` is called once by create_app. Everything here is for the people running the broker;
all data routes go through authorize_admin (the admin token; no token only under --admin-open).
The dashboard's static files carry no data and are served to anyone: the page asks for the admin
token when the data routes refuse it.
"""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker import metrics
from broker.api import public_url
from broker.auth import authorize_admin
from broker.context import CONTEXT, context_of
from broker.errors import ApiError
from broker.openapi import document
from broker.vocabulary import TRANSPORTS

STATIC = Path(__file__).parent / "static" / "dashboard"
# The JS SDK's ESM build (git-ignored; `npm run build` in client_sdk/js). The dashboard's channel
# tail uses it when present and falls back to its own EventSource tail when it is not.
SDK_DIST = Path(__file__).parent.parent / "client_sdk" / "js" / "dist" / "esm"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts are refused with any other type
    ".mjs": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
READ_TOKEN_TTL = 3600  # seconds; the dashboard asks for a fresh one per tail


def setup(app: web.Application) -> None:
    metrics.install(app, app[CONTEXT])
    app.router.add_routes(
        [
            web.get("/metrics", prometheus),
            web.get("/openapi.json", openapi),
            web.get("/v1/admin/stats", stats),
            web.post("/v1/admin/channels/{channel_id}/read-token", read_token),
            web.get("/", index),
            web.get("/dashboard", dashboard_index),
            web.get("/dashboard/sdk/{path:.+}", dashboard_sdk),
            web.get("/dashboard/{path}", dashboard_file),
        ]
    )


async def prometheus(request: web.Request) -> web.Response:
    # Same policy as the admin routes: metrics reveal traffic volumes, and Prometheus can send
    # a bearer token (`authorization:` in the scrape config).
    authorize_admin(request)
    body = generate_latest(request.app[metrics.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(public_url(request)))


async def stats(request: web.Request) -> web.Response:
    """Cumulative counters and current gauges; the dashboard derives rates from two readings."""
    authorize_admin(request)
    ctx = context_of(request)
    counts = ctx.hub.counts()
    return web.json_response(
        {
            "time": time.time(),
            "started_at": ctx.started_at,
            "engine": ctx.engine.name,
            "draining": ctx.draining,
            "subscribers": {t: counts.get(t, 0) for t in TRANSPORTS},
            "watched_channels": ctx.hub.channel_count,
            "totals": request.app[metrics.METRICS].totals(),
        }
    )


async def read_token(request: web.Request) -> web.Response:
    """A short-lived read token for one channel, so the dashboard can tail it over the normal
    read endpoints without putting the admin token in a URL (EventSource cannot send headers)."""
    authorize_admin(request)
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    if await ctx.engine.info(channel_id) is None:
        raise ApiError(404, "channel_not_found", f"There is no channel {channel_id}.")
    token = ctx.keys.sign(channel_id, "read", public_url(request), READ_TOKEN_TTL)
    return web.json_response({"token": token, "expires_in": READ_TOKEN_TTL})


async def index(request: web.Request) -> web.StreamResponse:
    """What this server is, with links: a new user's first request is often `GET /`."""
    return _file(STATIC.parent, "index.html")


async def dashboard_index(request: web.Request) -> web.StreamResponse:
    return _file(STATIC, "index.html")


async def dashboard_file(request: web.Request) -> web.StreamResponse:
    return _file(STATIC, request.match_info["path"])


async def dashboard_sdk(request: web.Request) -> web.StreamResponse:
    return _file(SDK_DIST, request.match_info["path"])


def _file(root: Path, relative: str) -> web.StreamResponse:
    path = (root / relative).resolve()
    # resolve() folds any `..`, so the containment check below is what keeps requests in root.
    if (
        not path.is_relative_to(root.resolve())
        or path.suffix not in CONTENT_TYPES
        or not path.is_file()
    ):
        raise ApiError(404, "not_found", f"No dashboard file {relative}.")
    return web.FileResponse(
        path, headers={"Content-Type": CONTENT_TYPES[path.suffix], "Cache-Control": "no-cache"}
    )
