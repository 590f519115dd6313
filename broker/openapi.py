"""The OpenAPI 3.1 document of the broker's HTTP API, served at `/openapi.json`.

Written by hand beside docs/protocol.md (the prose contract) rather than generated from handlers:
the handlers parse requests by hand, so there is nothing to generate from. tests/test_ops.py keeps
it honest: every route of the real router must be documented here and every path here must exist,
and real responses are checked against the schemas.
"""

from __future__ import annotations

from typing import Any

from broker.vocabulary import CHANNEL_STATES, TERMINAL_EVENT_TYPES, TRANSPORTS

JSON = "application/json"
SSE = "text/event-stream"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


STRING: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY: Schema = {"description": "any JSON value, null included"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
EVENT_ID: Schema = {"type": "string", "pattern": r"^\d+-\d+$", "description": "opaque, increasing"}
SUBSCRIBERS: Schema = _obj({t: INT for t in TRANSPORTS})

WRITER_TIMEOUT: Schema = {
    "type": "integer",
    "description": "seconds of the writer lease: 0 (none) or 5 to 86400",
}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(
        {"error": _obj({"code": STRING, "message": STRING})},
    ),
    "Health": _obj(
        {
            "status": {"enum": ["ok", "degraded", "draining"]},
            "engine": {"enum": ["memory", "redis"]},
            "engine_ok": BOOL,
        },
        {"pid": INT},
    ),
    "ChannelToken": _obj(
        {"unbroken": {"const": 1}, "broker": STRING, "channel": STRING, "token": STRING},
        {"writer_timeout": WRITER_TIMEOUT},
    ),
    "Opened": _obj(
        {
            "id": STRING,
            "state": {"const": "open"},
            "read_token": STRING,
            "channel_token": _ref("ChannelToken"),
            "writer_timeout": WRITER_TIMEOUT,
            "expires_in": INT,
            "heartbeat": NUMBER,
            "urls": _obj({k: STRING for k in ("events", "stream", "ws", "poll", "messages")}),
        }
    ),
    "ChannelStatus": _obj(
        {
            "id": STRING,
            "state": {"enum": list(CHANNEL_STATES)},
            "created_at": {"type": "integer", "description": "ms since the epoch"},
            "updated_at": INT,
            "messages": {"type": "integer", "description": "events ever appended"},
            "last_event_id": NULLABLE_STRING,
            "subscribers": SUBSCRIBERS,
        },
        {
            "expires_in": {"type": "integer", "description": "seconds until expiry, -1 unknown"},
            "writer_timeout": WRITER_TIMEOUT,
        },
    ),
    "ChannelList": _obj({"channels": {"type": "array", "items": _ref("ChannelStatus")}}),
    "Event": _obj(
        {"id": EVENT_ID, "type": {"enum": ["message", *TERMINAL_EVENT_TYPES]}, "data": ANY}
    ),
    "CancelBody": {
        "type": "object",
        "properties": {"reason": {"type": ["string", "null"], "maxLength": 200}},
    },
    "Inspection": {
        "allOf": [
            _ref("ChannelStatus"),
            _obj({"events": {"type": "array", "items": _ref("Event")}}),
        ]
    },
    "WriteBody": {
        "type": "object",
        "description": "One of `data` or `messages` (for /messages); writer+seq for idempotency.",
        "properties": {
            "data": ANY,
            "messages": {"type": "array", "items": ANY, "minItems": 1},
            "writer": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"},
            "seq": {"type": "integer", "minimum": 1, "maximum": 2**53},
        },
    },
    "WriteResult": _obj(
        {
            "ids": {"type": "array", "items": EVENT_ID},
            "duplicate": BOOL,
            "last_event_id": NULLABLE_STRING,
        }
    ),
    "PollResult": _obj(
        {
            "events": {"type": "array", "items": _ref("Event")},
            "last_event_id": NULLABLE_STRING,
            "ended": BOOL,
            "gap": {"oneOf": [{"type": "null"}, _obj({"first_id": EVENT_ID})]},
        }
    ),
    "Stats": _obj(
        {
            "time": NUMBER,
            "started_at": NUMBER,
            "engine": STRING,
            "draining": BOOL,
            "subscribers": SUBSCRIBERS,
            "watched_channels": INT,
            "totals": {
                "type": "object",
                "description": "every counter and gauge of /metrics summed over its labels",
                "additionalProperties": NUMBER,
            },
        }
    ),
    "ReadToken": _obj({"token": STRING, "expires_in": INT}),
}

_ERROR_TEXT = {
    400: "Bad request",
    401: "No token, or a malformed/expired one",
    403: "The token does not allow this",
    404: "Not found",
    409: "Conflict",
    410: "The channel expired or was deleted",
    413: "Too large",
    429: "Too many channels opened (from this address, or broker-wide)",
    503: "Unavailable: shutting down, storage unreachable, or at capacity; see Retry-After",
}


def _errors(*codes: tuple[int, str]) -> dict[str, Any]:
    """Error responses; each status lists the `error.code` values it can carry."""
    by_status: dict[int, list[str]] = {}
    for status, code in codes:
        by_status.setdefault(status, []).append(code)
    return {
        str(status): {
            "description": f"{_ERROR_TEXT[status]}: " + ", ".join(f"`{c}`" for c in names),
            "content": {JSON: {"schema": _ref("Error")}},
        }
        for status, names in sorted(by_status.items())
    }


def _json(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


TOKEN_ERRORS = (
    (401, "token_missing"),
    (401, "token_invalid"),
    (401, "token_expired"),
    (403, "token_wrong_channel"),
)
ADMIN_ERRORS = ((401, "token_missing"), (403, "admin_token_invalid"), (403, "admin_disabled"))
WRITE_ERRORS = (
    *TOKEN_ERRORS,
    (403, "token_wrong_scope"),
    (400, "invalid_json"),
    (400, "invalid_body"),
    (400, "invalid_writer"),
    (400, "invalid_seq"),
    (400, "invalid_idempotency_key"),
    (400, "too_many_messages"),
    (409, "channel_ended"),
    (409, "channel_cancelled"),
    (410, "channel_gone"),
    (413, "message_too_large"),
)
READ_ERRORS = (
    *TOKEN_ERRORS,
    (400, "bad_last_event_id"),
    (410, "channel_gone"),
    (503, "shutting_down"),
)

CHANNEL_ID = {
    "name": "channel_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"},
}
TOKEN_QUERY = {
    "name": "token",
    "in": "query",
    "required": False,
    "schema": STRING,
    "description": "The token, where an Authorization header cannot be sent.",
}
RESUME = [
    {
        "name": "last_event_id",
        "in": "query",
        "required": False,
        "schema": EVENT_ID,
        "description": "Resume after this id (wins over the header).",
    },
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": EVENT_ID},
]
MAX_DURATION = {
    "name": "max_duration",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 1, "maximum": 86400},
    "description": "Close after this many seconds, with a `reconnect` event first.",
}
ONLY = {
    "name": "only",
    "in": "query",
    "required": False,
    "schema": {"enum": ["terminal"]},
    "description": "`terminal`: only end/error/cancelled and heartbeats, from the channel's "
    "current end (no replay): how a writer learns of a cancel over HTTP.",
}
IDEMPOTENCY = [
    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": STRING},
    {"name": "Unbroken-Writer", "in": "header", "required": False, "schema": STRING},
    {"name": "Unbroken-Seq", "in": "header", "required": False, "schema": INT},
]
CHANNEL_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {"queryToken": []}]
# {}: no credentials, which passes from loopback while no admin token is configured.
ADMIN_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {"queryToken": []}, {}]


def _stream(
    summary: str, description: str, *extra: Schema, errors: tuple[tuple[int, str], ...] = ()
) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description,
        "security": CHANNEL_AUTH,
        "parameters": [CHANNEL_ID, TOKEN_QUERY, *RESUME, MAX_DURATION, *extra],
        "responses": {
            "200": {
                "description": "Events in SSE framing: `id`/`event`/`data` lines, `: hb` "
                "heartbeats, `event: gap` and `event: reconnect` notices.",
                "content": {SSE: {"schema": STRING}},
            },
            "204": {"description": "The channel ended and nothing follows the reader's position."},
            **_errors(*READ_ERRORS, (400, "invalid_max_duration"), *errors),
        },
    }


def _write(summary: str, description: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description,
        "security": CHANNEL_AUTH,
        "parameters": [CHANNEL_ID, TOKEN_QUERY, *IDEMPOTENCY],
        "requestBody": {
            "required": summary.startswith("Append message"),
            "content": {JSON: {"schema": _ref("WriteBody")}},
        },
        "responses": {
            "201": _json("Stored.", _ref("WriteResult")),
            "200": _json(
                "A retried request: nothing stored (`duplicate: true`).", _ref("WriteResult")
            ),
            **_errors(*WRITE_ERRORS),
        },
    }


def _file(summary: str, param: str | None) -> dict[str, Any]:
    parameters = [{"name": param, "in": "path", "required": True, "schema": STRING}]
    return {
        "summary": summary,
        "security": [],
        "parameters": parameters if param else [],
        "responses": {
            "200": {
                "description": "The file.",
                "content": {"text/html": {}, "text/javascript": {}, "text/css": {}},
            },
            **_errors((404, "not_found")),
        },
    }


PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {
            "summary": "Liveness and engine",
            "security": [],
            "responses": {
                "200": _json(
                    "Serving; `engine_ok` false (`status: degraded`) while the engine's "
                    "storage is unreachable.",
                    _ref("Health"),
                ),
                "503": _json("Draining for shutdown (`status: draining`).", _ref("Health")),
            },
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: serving and the engine's storage reachable",
            "description": "The engine is probed with one PING (0.5 s timeout), cached for 1 s.",
            "security": [],
            "responses": {
                "200": _json("Ready for traffic.", _ref("Health")),
                "503": _json("Draining, or the engine is unreachable.", _ref("Health")),
            },
        }
    },
    "/v1/channels": {
        "post": {
            "summary": "Open a channel",
            "description": "Under the `key` open policy send the app key as Bearer; under "
            "`open`, opens are rate-limited per address (429 with Retry-After). Broker-wide caps "
            "hold under both: opens per second (429 `rate_limited`) and, on the memory engine, "
            "channels held (503 `too_many_channels`).",
            "security": [{"bearer": []}, {}],
            "requestBody": {
                "required": False,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"},
                                "writer_timeout": {
                                    **WRITER_TIMEOUT,
                                    "description": "the writer lease: 0 (none) or 5 to "
                                    "86400 seconds; default the broker's --writer-timeout (60)",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _json("The channel, its tokens and URLs.", _ref("Opened")),
                **_errors(
                    (400, "invalid_name"),
                    (400, "invalid_json"),
                    (400, "invalid_body"),
                    (400, "invalid_writer_timeout"),
                    (401, "app_key_required"),
                    (403, "app_key_invalid"),
                    (409, "channel_exists"),
                    (429, "rate_limited"),
                    (503, "too_many_channels"),
                ),
            },
        },
        "get": {
            "summary": "List live channels (admin)",
            "security": ADMIN_AUTH,
            "parameters": [
                TOKEN_QUERY,
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                },
            ],
            "responses": {
                "200": _json("Newest first.", _ref("ChannelList")),
                **_errors(*ADMIN_ERRORS, (400, "invalid_limit")),
            },
        },
    },
    "/v1/channels/{channel_id}": {
        "get": {
            "summary": "Channel status",
            "security": CHANNEL_AUTH,
            "parameters": [CHANNEL_ID, TOKEN_QUERY],
            "responses": {
                "200": _json(
                    "State, counts and this process's subscribers.", _ref("ChannelStatus")
                ),
                **_errors(*TOKEN_ERRORS, (404, "channel_not_found"), (410, "channel_gone")),
            },
        },
        "delete": {
            "summary": "Delete a channel (write or admin token)",
            "security": CHANNEL_AUTH,
            "parameters": [CHANNEL_ID, TOKEN_QUERY],
            "responses": {
                "204": {"description": "Deleted; its readers are disconnected."},
                **_errors(
                    *TOKEN_ERRORS,
                    (403, "token_wrong_scope"),
                    (404, "channel_not_found"),
                    (410, "channel_gone"),
                ),
            },
        },
    },
    "/v1/channels/{channel_id}/messages": {
        "post": _write("Append messages", '`{"data": …}` or `{"messages": […]}`.'),
    },
    "/v1/channels/{channel_id}/end": {
        "post": _write("End the channel", "Appends the terminal `end` event, with optional data."),
    },
    "/v1/channels/{channel_id}/error": {
        "post": _write("End the channel with an error", "Appends the terminal `error` event."),
    },
    "/v1/channels/{channel_id}/heartbeat": {
        "post": {
            "summary": "Writer heartbeat",
            "description": "The writer is alive but has nothing to write yet: moves the writer "
            "lease's deadline to now + writer_timeout (every write does too). A channel whose "
            "writer neither writes nor heartbeats for writer_timeout ends with the `error` event "
            '`{"code":"writer_timeout",…}`.',
            "security": CHANNEL_AUTH,
            "parameters": [CHANNEL_ID, TOKEN_QUERY],
            "responses": {
                "204": {"description": "Lease renewed."},
                **_errors(
                    *TOKEN_ERRORS,
                    (403, "token_wrong_scope"),
                    (409, "channel_ended"),
                    (409, "channel_cancelled"),
                    (410, "channel_gone"),
                ),
            },
        },
    },
    "/v1/channels/{channel_id}/cancel": {
        "post": {
            "summary": "Cancel the channel (stop generation)",
            "description": 'Appends the terminal `cancelled` event with data `{"reason": …}` '
            "and makes the state `cancelled`; writes then get 409 `channel_cancelled`. The read "
            "token suffices (a Stop button); the write token or the admin token work too.",
            "security": CHANNEL_AUTH,
            "parameters": [CHANNEL_ID, TOKEN_QUERY],
            "requestBody": {"required": False, "content": {JSON: {"schema": _ref("CancelBody")}}},
            "responses": {
                "201": _json("Cancelled.", _ref("WriteResult")),
                "200": _json(
                    "Already cancelled: nothing stored (`duplicate: true`).", _ref("WriteResult")
                ),
                **_errors(
                    *TOKEN_ERRORS,
                    (400, "invalid_json"),
                    (400, "invalid_body"),
                    (400, "invalid_reason"),
                    (409, "channel_ended"),
                    (410, "channel_gone"),
                ),
            },
        },
    },
    "/v1/channels/{channel_id}/events": {
        "get": _stream(
            "Read as Server-Sent Events",
            "For EventSource and SSE clients.",
            ONLY,
            errors=((400, "invalid_only"),),
        ),
    },
    "/v1/channels/{channel_id}/stream": {
        "get": _stream("Read as chunked HTTP", "SSE framing, default `max_duration` 50 s."),
    },
    "/v1/channels/{channel_id}/ws": {
        "get": {
            "summary": "Read over WebSocket",
            "description": "One JSON text frame per event (`message`/`end`/`error` with id and "
            "data, `ping`, `gap`, `reconnect`). A refused request is upgraded, gets one "
            '`{"type":"rejected","error":{…}}` frame and close code 4000 + HTTP status.',
            "security": CHANNEL_AUTH,
            "parameters": [CHANNEL_ID, TOKEN_QUERY, *RESUME],
            "responses": {
                "101": {"description": "Switching to the WebSocket protocol."},
                **_errors(*READ_ERRORS),
            },
        }
    },
    "/v1/channels/{channel_id}/poll": {
        "get": {
            "summary": "Long-poll",
            "security": CHANNEL_AUTH,
            "parameters": [
                CHANNEL_ID,
                TOKEN_QUERY,
                *RESUME,
                {
                    "name": "timeout",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "minimum": 0, "maximum": 55, "default": 25},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                },
            ],
            "responses": {
                "200": _json(
                    "Events after the position, or none when the timeout passed.",
                    _ref("PollResult"),
                ),
                **_errors(*READ_ERRORS, (400, "invalid_timeout"), (400, "invalid_limit")),
            },
        }
    },
    "/v1/admin/channels/{channel_id}": {
        "get": {
            "summary": "Inspect a channel and its latest events (admin)",
            "security": ADMIN_AUTH,
            "parameters": [
                CHANNEL_ID,
                TOKEN_QUERY,
                {
                    "name": "tail",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 20},
                },
            ],
            "responses": {
                "200": _json("Status and the last `tail` events.", _ref("Inspection")),
                **_errors(*ADMIN_ERRORS, (400, "invalid_tail"), (404, "channel_not_found")),
            },
        }
    },
    "/v1/admin/channels/{channel_id}/read-token": {
        "post": {
            "summary": "Mint a short-lived read token for a channel (admin)",
            "description": "Used by the dashboard to tail a channel without putting the admin "
            "token in a URL.",
            "security": ADMIN_AUTH,
            "parameters": [CHANNEL_ID, TOKEN_QUERY],
            "responses": {
                "200": _json("A read token.", _ref("ReadToken")),
                **_errors(*ADMIN_ERRORS, (404, "channel_not_found")),
            },
        }
    },
    "/v1/admin/stats": {
        "get": {
            "summary": "Broker-wide counters for the dashboard (admin)",
            "security": ADMIN_AUTH,
            "parameters": [TOKEN_QUERY],
            "responses": {
                "200": _json("Cumulative counters; rates come from two readings.", _ref("Stats")),
                **_errors(*ADMIN_ERRORS),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (admin)",
            "security": ADMIN_AUTH,
            "parameters": [TOKEN_QUERY],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": STRING}},
                },
                **_errors(*ADMIN_ERRORS),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
        }
    },
    "/": {"get": _file("A page saying what this server is, with links", None)},
    "/dashboard": {"get": _file("The dashboard page", None)},
    "/dashboard/{path}": {"get": _file("A dashboard file (JS, CSS)", "path")},
    "/dashboard/sdk/{path}": {
        "get": _file("The JS SDK's ESM build, when built (client_sdk/js/dist/esm)", "path")
    },
}


def document(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Unbroken broker",
            "version": "1",
            "description": "Pub/sub channels with exact resume over SSE, chunked HTTP, "
            "WebSocket and long-poll. The wire format is specified in docs/protocol.md. "
            'Every error body is `{"error": {"code", "message"}}`; any route can also '
            "answer 404 `not_found`, 405 `method_not_allowed`, 500 `internal_error` or, while "
            "the engine's storage is unreachable, 503 `engine_unavailable` with Retry-After.",
        },
        "servers": [{"url": server_url}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Channel token (JWT), admin token or app key, per route.",
                },
                "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }
