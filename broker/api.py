"""The channel API: open, write, end, error, status, delete, list."""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Any

from aiohttp import web

from broker import metrics
from broker.auth import authorize_admin, authorize_channel, authorize_open
from broker.config import MAX_WRITER_TIMEOUT, MIN_WRITER_TIMEOUT, valid_writer_timeout
from broker.context import BrokerContext, context_of
from broker.engine.base import MAX_BATCH_EVENTS, MAX_CANCEL_REASON, ChannelInfo
from broker.errors import ApiError
from broker.events import EventType, dumps, pack
from broker.vocabulary import TRANSPORTS

# Names are matched with fullmatch: `$` would let a trailing "\n" through.
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
WRITER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Idempotency keys are stored as writers under a prefix no writer id can take ('#' is outside
# WRITER_ID), so a client naming its writer "key:abc" cannot collide with `Idempotency-Key: abc`.
IDEMPOTENCY_NAMESPACE = "key#"
MAX_SEQ = 2**53  # stays exact in JavaScript numbers
MAX_BATCH = MAX_BATCH_EVENTS  # messages per request: one append is one Redis call
MAX_DEPTH = 64  # nesting of arrays and objects in a body; JSON readers recurse


def public_url(request: web.Request) -> str:
    configured = context_of(request).settings.public_url
    if configured:
        return configured.rstrip("/")
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
    host = request.headers.get("X-Forwarded-Host", request.host)
    return f"{scheme}://{host}"


def channel_urls(base: str, channel_id: str) -> dict[str, str]:
    root = f"{base}/v1/channels/{channel_id}"
    ws_base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
    return {
        "events": f"{root}/events",
        "stream": f"{root}/stream",
        "ws": f"{ws_base}/v1/channels/{channel_id}/ws",
        "poll": f"{root}/poll",
        "messages": f"{root}/messages",
    }


def valid_name(pattern: re.Pattern[str], value: object) -> bool:
    """A whole-string match that is not only dots ("." and ".." read as paths in URLs)."""
    return (
        isinstance(value, str) and pattern.fullmatch(value) is not None and value.strip(".") != ""
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit` (iterative: no recursion to blow)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity (JSON has none; readers choke on them), no number that
    overflows a double, at most MAX_DEPTH levels of nesting. Raises ApiError 400 invalid_json."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ApiError(400, "invalid_json", "The body is nested too deeply.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from exc
    # Fewer brackets than the limit cannot nest past it: most bodies skip the walk.
    if (
        isinstance(value, (dict, list))
        and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
        and _too_deep(value, MAX_DEPTH)
    ):
        raise ApiError(
            400, "invalid_json", f"The body is nested too deeply (at most {MAX_DEPTH} levels)."
        )
    return value


async def json_body(request: web.Request, *, required: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_body", "The request needs a JSON object body.")
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "The body must be a JSON object.")
    return body


async def body_size(request: web.Request) -> int:
    """Bytes actually read: Content-Length is absent with chunked transfer encoding."""
    return len(await request.read())  # cached by aiohttp after the first read


def info_json(
    ctx: BrokerContext, info: ChannelInfo, elsewhere: dict[str, int] | None = None
) -> dict[str, Any]:
    """The channel's status; readers of this process, plus `elsewhere` (other processes')."""
    counts = ctx.hub.counts(info.id)
    if elsewhere:
        counts.update(elsewhere)
    return {
        "id": info.id,
        "state": info.state,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "messages": info.messages,
        "last_event_id": info.last_event_id,
        "expires_in": info.ttl,
        "writer_timeout": info.writer_timeout,
        "subscribers": {t: counts.get(t, 0) for t in TRANSPORTS},
    }


async def open_channel(request: web.Request) -> web.Response:
    ctx = context_of(request)
    authorize_open(request)
    body = await json_body(request, required=False)
    name = body.get("name")
    if name is None:
        channel_id = "ch_" + secrets.token_urlsafe(16)
    elif not valid_name(CHANNEL_NAME, name):
        raise ApiError(
            400,
            "invalid_name",
            "A channel name is 1-128 characters of A-Z a-z 0-9 _ . : -, not only dots.",
        )
    else:
        channel_id = name
    writer_timeout = body.get("writer_timeout", ctx.settings.writer_timeout)
    if not valid_writer_timeout(writer_timeout):
        raise ApiError(
            400,
            "invalid_writer_timeout",
            f"writer_timeout is whole seconds: 0 (no writer lease) or {MIN_WRITER_TIMEOUT} to "
            f"{MAX_WRITER_TIMEOUT}.",
        )
    await ctx.engine.create(channel_id, writer_timeout=writer_timeout)
    metrics.count_opened(request)
    base = public_url(request)
    ttl = ctx.settings.token_ttl
    write_token = ctx.keys.sign(channel_id, "write", base, ttl)
    payload = {
        "id": channel_id,
        "state": "open",
        "read_token": ctx.keys.sign(channel_id, "read", base, ttl),
        "channel_token": {
            "unbroken": 1,
            "broker": base,
            "channel": channel_id,
            "token": write_token,
            "writer_timeout": writer_timeout,
        },
        "writer_timeout": writer_timeout,
        "expires_in": ctx.settings.limits.idle_ttl,
        "heartbeat": ctx.settings.heartbeat,
        "urls": channel_urls(base, channel_id),
    }
    return web.json_response(payload, status=201)


async def channel_status(request: web.Request) -> web.Response:
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "read")
    # A status must not show a channel open whose writer's lease ran out.
    await ctx.engine.expire_writers([channel_id])
    info = await ctx.engine.info(channel_id)
    if info is None:
        raise gone_or_missing(request, channel_id)
    elsewhere = await ctx.engine.readers_elsewhere(channel_id)
    return web.json_response(info_json(ctx, info, elsewhere))


async def writer_heartbeat(request: web.Request) -> web.Response:
    """The writer is alive but has nothing to write yet: renew its lease (see writer_timeout)."""
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "write")
    await ctx.engine.heartbeat(channel_id)
    return web.Response(status=204)


async def delete_channel(request: web.Request) -> web.Response:
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "write")
    if not await ctx.engine.delete(channel_id):
        raise gone_or_missing(request, channel_id)
    return web.Response(status=204)


async def list_channels(request: web.Request) -> web.Response:
    ctx = context_of(request)
    authorize_admin(request)
    try:
        limit = min(10_000, max(1, int(request.query.get("limit", "1000"))))
    except ValueError as exc:
        raise ApiError(400, "invalid_limit", "limit must be an integer from 1 to 10000.") from exc
    infos = await ctx.engine.channels(limit)
    return web.json_response({"channels": [info_json(ctx, info) for info in infos]})


def gone_or_missing(request: web.Request, channel_id: str) -> ApiError:
    # A valid channel token proves the channel existed, so its absence means it expired or was
    # deleted; only admin requests can ask about ids that never existed.
    if authorize_channel(request, channel_id, "read") is None:
        return ApiError(404, "channel_not_found", f"There is no channel {channel_id}.")
    return ApiError(410, "channel_gone", f"Channel {channel_id} has expired or was deleted.")


# --- writing -------------------------------------------------------------------------------


def _writer_and_seq(request: web.Request, body: dict[str, Any]) -> tuple[str | None, int | None]:
    key = request.headers.get("Idempotency-Key")
    writer = body.get("writer", request.headers.get("Unbroken-Writer"))
    seq_raw = body.get("seq", request.headers.get("Unbroken-Seq"))
    if key is not None and writer is None:
        if not 0 < len(key) <= 200:
            raise ApiError(
                400, "invalid_idempotency_key", "Idempotency-Key must be 1-200 characters."
            )
        return IDEMPOTENCY_NAMESPACE + key, 1
    if writer is None and seq_raw is None:
        return None, None
    if not valid_name(WRITER_ID, writer):
        raise ApiError(
            400,
            "invalid_writer",
            "writer must be 1-128 characters of A-Z a-z 0-9 _ . : - with a seq.",
        )
    seq = -1
    if isinstance(seq_raw, str):
        # ASCII digits only: int() also reads Arabic-Indic digits and " 7_0 ".
        seq = int(seq_raw) if seq_raw.isascii() and seq_raw.isdigit() and len(seq_raw) < 20 else -1
    elif isinstance(seq_raw, (int, float)) and not isinstance(seq_raw, bool):
        seq = int(seq_raw)  # floats are finite here: the JSON parser refuses the others
    if not 1 <= seq <= MAX_SEQ or (isinstance(seq_raw, float) and not seq_raw.is_integer()):
        raise ApiError(
            400,
            "invalid_seq",
            "seq must be an integer from 1 to 2^53 numbering the writer's requests.",
        )
    return writer, seq


def _encode(ctx: BrokerContext, value: Any, raw_size: int) -> bytes:
    limit = ctx.settings.max_message_bytes
    # The whole body bounds every message in it, so most requests skip measuring each one.
    if raw_size > limit and len(dumps(value).encode()) > limit:
        raise ApiError(
            413, "message_too_large", f"A message is over {limit} bytes as JSON; split it up."
        )
    try:
        return pack(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_body", f"The message cannot be stored: {exc}.") from exc


async def _append(
    request: web.Request, items: list[tuple[EventType, bytes]], body: dict[str, Any]
) -> web.Response:
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    writer, seq = _writer_and_seq(request, body)
    result = await ctx.engine.append(channel_id, items, writer=writer, seq=seq)
    metrics.count_written(request, items[-1][0], len(items), result.duplicate)
    return web.json_response(
        {"ids": result.ids, "duplicate": result.duplicate, "last_event_id": result.last_event_id},
        status=200 if result.duplicate else 201,
    )


async def write_messages(request: web.Request) -> web.Response:
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "write")
    body = await json_body(request, required=True)
    size = await body_size(request)
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "invalid_body", "'messages' must be a non-empty array.")
        if len(messages) > MAX_BATCH:
            raise ApiError(
                400,
                "too_many_messages",
                f"At most {MAX_BATCH} messages per request; send the rest in another.",
            )
        items: list[tuple[EventType, bytes]] = [
            ("message", _encode(ctx, m, size)) for m in messages
        ]
    elif "data" in body:
        items = [("message", _encode(ctx, body["data"], size))]
    else:
        raise ApiError(400, "invalid_body", 'Send {"data": <json>} or {"messages": [<json>, …]}.')
    return await _append(request, items, body)


async def end_channel(request: web.Request) -> web.Response:
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "write")
    body = await json_body(request, required=False)
    payload = _encode(ctx, body.get("data"), await body_size(request))
    return await _append(request, [("end", payload)], body)


async def error_channel(request: web.Request) -> web.Response:
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "write")
    body = await json_body(request, required=False)
    data = body.get("data", {"message": "The backend reported an error."})
    payload = _encode(ctx, data, await body_size(request))
    return await _append(request, [("error", payload)], body)


async def cancel_channel(request: web.Request) -> web.Response:
    """Stop generation: any reader may cancel (the read token suffices), so may the writer."""
    ctx = context_of(request)
    channel_id = request.match_info["channel_id"]
    authorize_channel(request, channel_id, "read")
    body = await json_body(request, required=False)
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_CANCEL_REASON):
        raise ApiError(
            400,
            "invalid_reason",
            f"reason must be a string of at most {MAX_CANCEL_REASON} characters, or absent.",
        )
    result = await ctx.engine.cancel(channel_id, reason)
    return web.json_response(
        {"ids": result.ids, "duplicate": result.duplicate, "last_event_id": result.last_event_id},
        status=200 if result.duplicate else 201,
    )


async def inspect_channel(request: web.Request) -> web.Response:
    """Admin view of one channel: its state and its latest events."""
    ctx = context_of(request)
    authorize_admin(request)
    channel_id = request.match_info["channel_id"]
    info = await ctx.engine.info(channel_id)
    if info is None:
        raise ApiError(404, "channel_not_found", f"There is no channel {channel_id}.")
    try:
        tail = min(1000, max(0, int(request.query.get("tail", "20"))))
    except ValueError as exc:
        raise ApiError(400, "invalid_tail", "tail must be an integer from 0 to 1000.") from exc
    events: list[dict[str, Any]] = []
    after: str | None = None
    while tail:  # bounded by max_messages; an admin view, not a hot path
        page = await ctx.engine.read(channel_id, after, 1000)
        events.extend(event.as_dict() for event in page.events)
        events = events[-tail:]
        if not page.more or not page.events:
            break
        after = page.events[-1].id
    elsewhere = await ctx.engine.readers_elsewhere(channel_id)
    return web.json_response({**info_json(ctx, info, elsewhere), "events": events})
