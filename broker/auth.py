"""Who may do what: channel tokens, the admin token and the open policy."""

from __future__ import annotations

import hmac
import math

from aiohttp import web

from broker.context import BrokerContext, context_of
from broker.errors import ApiError
from broker.tokens import Claims, Scope, TokenError


def bearer_token(request: web.Request) -> str | None:
    """The token from `Authorization: Bearer …`, else from the `token` query parameter."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def is_admin(ctx: BrokerContext, token: str | None) -> bool:
    admin = ctx.settings.admin_token
    return bool(admin) and token is not None and _same(token, admin)


def _same(given: str, secret: str) -> bool:
    # Bytes: compare_digest refuses str with non-ASCII characters (TypeError, a 500).
    return hmac.compare_digest(given.encode(), secret.encode())


def authorize_channel(request: web.Request, channel_id: str, scope: Scope) -> Claims | None:
    """Check the request may use `scope` on `channel_id`. None means: admin access."""
    ctx = context_of(request)
    token = bearer_token(request)
    if is_admin(ctx, token):
        return None
    if token is None:
        raise ApiError(
            401,
            "token_missing",
            "Send the channel's token as 'Authorization: Bearer <token>' or '?token=<token>'.",
        )
    try:
        return ctx.keys.authorize(token, channel_id, scope)
    except TokenError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc


def authorize_admin(request: web.Request) -> None:
    """Admin routes need the admin token; only an explicit `--admin-open` (local development)
    lets requests in without it. Being on loopback proves nothing: a reverse proxy on the same
    host, or a web page in the operator's browser, also connects from 127.0.0.1."""
    ctx = context_of(request)
    token = bearer_token(request)
    if is_admin(ctx, token) or ctx.settings.admin_open:
        return
    if not ctx.settings.admin_token:
        raise ApiError(
            403,
            "admin_disabled",
            "Admin routes are disabled until the broker has an admin token "
            "(UNBROKEN_ADMIN_TOKEN or --admin-token-file; --admin-open for local development).",
        )
    if token is None:
        raise ApiError(
            401, "token_missing", "This route needs the admin token (UNBROKEN_ADMIN_TOKEN)."
        )
    raise ApiError(403, "admin_token_invalid", "The admin token is wrong.")


def authorize_open(request: web.Request) -> None:
    """Apply the open policy (an app key, or a per-address rate limit), then the broker-wide
    caps that hold whatever the policy: opens per second and channels held in memory."""
    ctx = context_of(request)
    _open_policy(ctx, request)
    if ctx.global_open_limiter is not None:
        wait = ctx.global_open_limiter.retry_after("*")
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"The broker is opening its maximum of {ctx.settings.max_open_rate:g} channels "
                f"per second; retry in {wait:.1f} s.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    held = ctx.engine.held_channels()
    if ctx.settings.max_channels > 0 and held is not None and held >= ctx.settings.max_channels:
        raise ApiError(
            503,
            "too_many_channels",
            f"The broker holds its maximum of {ctx.settings.max_channels} channels; retry later.",
            headers={"Retry-After": str(TOO_MANY_CHANNELS_RETRY)},
        )


TOO_MANY_CHANNELS_RETRY = 30  # seconds; channels free up as they end, expire or are deleted


def _open_policy(ctx: BrokerContext, request: web.Request) -> None:
    if ctx.settings.open_policy == "key":
        token = bearer_token(request)
        if token is None:
            raise ApiError(
                401,
                "app_key_required",
                "Opening a channel needs 'Authorization: Bearer <app key>'.",
            )
        if not any(_same(token, key) for key in ctx.settings.app_keys):
            raise ApiError(403, "app_key_invalid", "The app key is not one this broker accepts.")
        return
    address = request.remote or "unknown"
    wait = ctx.open_limiter.retry_after(address)
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            f"Too many channels opened from {address}; retry in {wait:.1f} s.",
            headers={"Retry-After": str(max(1, round(wait)))},
        )
