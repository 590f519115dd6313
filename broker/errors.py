"""JSON errors: every failure leaves the broker as `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

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


def as_api_error(exc: BaseException, channel_id: str | None = None) -> ApiError | None:
    """The ApiError a domain exception stands for, or None for unexpected exceptions."""
    if isinstance(exc, ApiError):
        return exc
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
