"""JSON errors: every failure leaves the broker as `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.engine.base import ChannelCancelled, ChannelEnded, ChannelExists, ChannelNotFound
from broker.tokens import TokenError

log = logging.getLogger("unbroken.http")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(error: ApiError) -> web.Response:
    return web.json_response(
        error_body(error.code, error.message), status=error.status, headers=error.headers
    )


# Storage that cannot answer now but may in a moment: Redis down, restarting (LOADING), a replica
# or a failover in progress (READONLY, MASTERDOWN), a cluster resharding (TRYAGAIN, CLUSTERDOWN),
# or full (OOM). BusyLoadingError and sentinel's MasterNotFoundError are ConnectionErrors. Newer
# redis-py versions map more replies to classes; older ones leave them as ResponseError.
_UNAVAILABLE_TYPES = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
_UNAVAILABLE_NAMES = frozenset(
    {"MasterDownError", "ClusterDownError", "TryAgainError", "OutOfMemoryError"}
)
_UNAVAILABLE_REPLIES = ("MASTERDOWN", "LOADING", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "OOM")
ENGINE_RETRY_AFTER = 2  # seconds; a Redis restart or failover typically takes a few
OUTAGE_LOG_INTERVAL = 10.0  # seconds between WARNING lines while the engine stays unavailable


def engine_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the engine's storage is unreachable for now (answer 503, not 500)."""
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return True
    if any(kind.__name__ in _UNAVAILABLE_NAMES for kind in type(exc).__mro__):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)


class _OutageLog:
    """One WARNING line per interval during an outage, not one traceback per request."""

    def __init__(self) -> None:
        self.logged_at = float("-inf")
        self.unlogged = 0

    def note(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.logged_at < OUTAGE_LOG_INTERVAL:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more refused since the last line)" if self.unlogged else ""
        log.warning(
            "engine unavailable, answering 503 engine_unavailable: %s: %s%s",
            type(exc).__name__,
            exc,
            more,
        )
        self.logged_at, self.unlogged = now, 0


_outage_log = _OutageLog()


def unavailable(exc: BaseException) -> ApiError:
    """The 503 for an engine that cannot answer now (and a WARNING line, at most one per
    OUTAGE_LOG_INTERVAL)."""
    _outage_log.note(exc)
    return ApiError(
        503,
        "engine_unavailable",
        "The broker's storage (Redis) is unreachable; retry shortly.",
        headers={"Retry-After": str(ENGINE_RETRY_AFTER)},
    )


def as_api_error(exc: BaseException, channel_id: str | None = None) -> ApiError | None:
    """The ApiError a domain exception stands for, or None for unexpected exceptions."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HttpProcessingError):  # a body the HTTP parser refused mid-way
        return ApiError(400, "bad_request", "The request body is not valid HTTP/1.1.")
    if engine_unavailable(exc):
        return unavailable(exc)
    if isinstance(exc, TokenError):
        return ApiError(exc.status, exc.code, exc.message)
    if isinstance(exc, ChannelNotFound):
        return ApiError(
            410, "channel_gone", f"Channel {channel_id or exc} has expired or was deleted."
        )
    if isinstance(exc, ChannelCancelled):
        return ApiError(
            409,
            "channel_cancelled",
            f"Channel {channel_id or exc} was cancelled by a reader; stop writing to it.",
        )
    if isinstance(exc, ChannelEnded):
        return ApiError(
            409,
            "channel_ended",
            f"Channel {channel_id or exc} has ended; nothing more can be written.",
        )
    if isinstance(exc, ChannelExists):
        return ApiError(409, "channel_exists", f"A channel named {exc} already exists.")
    return None


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "message_too_large",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        message = (
            exc.reason if exc.status != 404 else f"No route for {request.method} {request.path}."
        )
        if exc.status == 413:
            message = "The request body is too large; send smaller batches."
        response = web.json_response(error_body(code, message), status=exc.status)
        if exc.status == 405:
            allow = exc.headers.get("Allow")
            if allow:
                response.headers["Allow"] = allow
        return response
    except Exception as exc:
        api_error = as_api_error(exc, request.match_info.get("channel_id"))
        if api_error is not None:
            return error_response(api_error)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            error_body(
                "internal_error",
                "The broker failed unexpectedly; retry, and report it if it persists.",
            ),
            status=500,
        )
