"""Which tokens the worker believes and which brokers it talks to (docs/protocol.md, "Trust model").

A channel token reaches the backend from a client, so it is untrusted input:
- Writing straight into Redis skips the broker's checks, so the worker verifies the token's
  signature with the broker's key ring (UNBROKEN_SECRET or `secret=`) and refuses without one.
- Over HTTP the broker verifies the token, but the worker must not send it (and its requests)
  wherever the token says: it only talks to the brokers on its allow-list (UNBROKEN_BROKER_URL
  or `broker_url=`), and uses the token's URL only to pick one of them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from broker.tokens import Claims, KeyRing, TokenError, read_claims_unverified
from worker.errors import BadTokenError

# The broker's channel name pattern; the id also becomes a URL path segment and a Redis key part.
_CHANNEL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}\Z")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class ChannelToken:
    """A parsed channel token: what the client sent, not yet trusted."""

    jwt: str
    claims: Claims
    broker: str  # the URL the token names (the serialized object's `broker`, else the claim)
    writer_timeout: int | None  # the lease announced in the serialized channel, if any


def parse(token: str | Mapping[str, Any]) -> ChannelToken:
    """Read a channel token in any of its forms (the object the client serialized, its JSON
    text, or the bare write JWT) without trusting it yet."""
    value: Any = token
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise BadTokenError("The channel token is not valid JSON.") from exc
    if isinstance(value, Mapping):
        jwt = value.get("token")
        if not isinstance(jwt, str):
            raise BadTokenError(
                "The channel token has no 'token' field; pass the object the client's "
                "channel serialized to (JSON.stringify(channel))."
            )
    elif isinstance(value, str):
        jwt, value = value.strip(), {}
    else:
        raise BadTokenError(f"A channel token is a str or a dict, not {type(token).__name__}.")
    try:
        claims = read_claims_unverified(jwt)
    except TokenError as exc:
        raise BadTokenError(exc.message, exc.code) from exc
    check_claims(claims)
    timeout = value.get("writer_timeout")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        timeout = None
    return ChannelToken(
        jwt=jwt,
        claims=claims,
        broker=str(value.get("broker") or claims.url),
        writer_timeout=timeout
        if isinstance(timeout, int) and not isinstance(timeout, bool)
        else None,
    )


def check_claims(claims: Claims) -> None:
    if claims.scope != "write":
        raise BadTokenError(
            "This is the client's read token; the backend needs the channel token "
            "(the serialized channel)."
        )
    if not _CHANNEL_ID.match(claims.channel) or claims.channel in (".", ".."):
        raise BadTokenError("The token names no valid channel id.")


def key_ring(secret: str | None) -> KeyRing | None:
    """The broker's key ring from `secret=` or UNBROKEN_SECRET, or None when neither is set."""
    spec = secret if secret is not None else os.environ.get("UNBROKEN_SECRET", "")
    if not spec.strip():
        return None
    try:
        return KeyRing.parse(spec)
    except ValueError as exc:
        raise BadTokenError(
            f"UNBROKEN_SECRET (or secret=) is not a key ring ({exc}); use the broker's "
            "`kid:secret,...` value.",
            "worker_misconfigured",
        ) from exc


def verify(parsed: ChannelToken, ring: KeyRing) -> Claims:
    """The claims once the signature checks out with the broker's keys."""
    try:
        claims = ring.verify(parsed.jwt)
    except TokenError as exc:
        raise BadTokenError(
            f"{exc.message} The worker refuses a channel token it cannot verify.", exc.code
        ) from exc
    check_claims(claims)
    return claims


def require_verified(parsed: ChannelToken, ring: KeyRing | None) -> Claims:
    """Redis-direct writes bypass the broker, so only a verified token may be written with."""
    if ring is None:
        raise BadTokenError(
            "Writing straight to Redis needs the broker's key ring to verify the channel token: "
            "set UNBROKEN_SECRET (the broker's `kid:secret,...`) or pass secret=, "
            "or unset UNBROKEN_REDIS_URL to write through the broker's HTTP API.",
            "token_unverified",
        )
    return verify(parsed, ring)


def origin(url: str) -> str | None:
    """`scheme://host:port` with defaults filled in and case folded; None when not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or _DEFAULT_PORTS[scheme]}"


def allowed_brokers(broker_url: str | None) -> list[str]:
    """The allow-list: `broker_url=` or UNBROKEN_BROKER_URL, comma-separated."""
    spec = broker_url if broker_url is not None else os.environ.get("UNBROKEN_BROKER_URL", "")
    urls = [part.strip().rstrip("/") for part in spec.split(",") if part.strip()]
    for url in urls:
        if origin(url) is None:
            raise BadTokenError(
                f"UNBROKEN_BROKER_URL (or broker_url=) entry {url!r} is not an http(s) URL.",
                "worker_misconfigured",
            )
    return urls


def choose_broker(parsed: ChannelToken, allowed: list[str]) -> str:
    """The allowed broker URL this token's requests go to. The token's own URL only selects
    an entry of the allow-list (by origin); it is never contacted unless listed."""
    if not allowed:
        raise BadTokenError(
            f"The channel token names the broker {parsed.broker!r}, but this worker has no "
            "list of brokers it may talk to: set UNBROKEN_BROKER_URL (or pass broker_url=) to "
            "your broker's URL (comma-separate several).",
            "broker_not_allowed",
        )
    wanted = origin(parsed.broker) if parsed.broker else None
    if not parsed.broker:
        return allowed[0]
    for url in allowed:
        if origin(url) == wanted:
            return url
    raise BadTokenError(
        f"The channel token names the broker {parsed.broker!r}, which is not on this worker's "
        f"allow-list ({', '.join(allowed)}); add it to UNBROKEN_BROKER_URL (or broker_url=) "
        "if it is yours.",
        "broker_not_allowed",
    )
