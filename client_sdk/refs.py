"""Understanding what a user passes as "the channel": an id, a JWT, a channel token, an open
response (as an object or as JSON text)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from client_sdk.errors import InvalidChannelReference

_CHANNEL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class ChannelRef:
    channel_id: str
    token: str  # a read (or write) JWT
    broker_url: str | None = None  # from the token or the open response, when they tell
    heartbeat: float | None = None
    channel_token: dict[str, Any] | None = None  # only when the write token is known
    info: dict[str, Any] = field(default_factory=dict)  # the open response, when given one


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: the client only needs `ch` and `url` to find the
    channel; the broker verifies the signature."""
    if not _JWT.match(token):
        raise InvalidChannelReference("not a JWT (expected three base64url parts)")
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError as exc:
        raise InvalidChannelReference(f"the token's claims cannot be decoded: {exc}") from exc
    if not isinstance(claims, dict):
        raise InvalidChannelReference("the token's claims are not a JSON object")
    return claims


def resolve(reference: str | Mapping[str, Any], token: str | None = None) -> ChannelRef:
    """Make sense of `reference`; `token` (a read token) is needed only with a bare id."""
    if isinstance(reference, Mapping):
        return _from_mapping(dict(reference), token)
    text = reference.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidChannelReference(
                f"the channel reference is not valid JSON: {exc}"
            ) from exc
        if not isinstance(value, dict):
            raise InvalidChannelReference("the channel reference JSON must be an object")
        return _from_mapping(value, token)
    if _JWT.match(text) and text.count(".") == 2 and not _CHANNEL_ID.match(text):
        return _from_jwt(text)
    if _JWT.match(text) and text.count(".") == 2:
        # A JWT-shaped string could also be a channel named "a.b.c": the claims decide.
        try:
            return _from_jwt(text)
        except InvalidChannelReference:
            pass
    if not _CHANNEL_ID.match(text):
        raise InvalidChannelReference(
            f"{text[:60]!r} is neither a channel id, a token nor a channel token"
        )
    if not token:
        raise InvalidChannelReference(
            f"reading channel {text!r} needs its read token (token=... or --token)"
        )
    return ChannelRef(channel_id=text, token=token)


def _from_jwt(token: str) -> ChannelRef:
    claims = jwt_claims(token)
    channel_id = claims.get("ch")
    if not isinstance(channel_id, str) or not channel_id:
        raise InvalidChannelReference("the token has no `ch` claim: is it an Unbroken token?")
    url = claims.get("url")
    return ChannelRef(
        channel_id=channel_id, token=token, broker_url=url if isinstance(url, str) else None
    )


def _from_mapping(value: dict[str, Any], token: str | None) -> ChannelRef:
    if "read_token" in value and "id" in value:  # the open response
        channel_token = value.get("channel_token")
        ct = channel_token if isinstance(channel_token, dict) else None
        heartbeat = value.get("heartbeat")
        return ChannelRef(
            channel_id=str(value["id"]),
            token=token or str(value["read_token"]),
            broker_url=str(ct["broker"]) if ct and isinstance(ct.get("broker"), str) else None,
            heartbeat=float(heartbeat) if isinstance(heartbeat, int | float) else None,
            channel_token=ct,
            info=value,
        )
    if "channel" in value and "token" in value:  # the channel token
        broker = value.get("broker")
        return ChannelRef(
            channel_id=str(value["channel"]),
            token=token or str(value["token"]),
            broker_url=broker if isinstance(broker, str) else None,
            channel_token=value,
        )
    raise InvalidChannelReference(
        "expected an open response ({id, read_token, ...}) or a channel token "
        "({unbroken, broker, channel, token})"
    )
