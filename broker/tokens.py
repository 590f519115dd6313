"""Channel capability tokens: compact JWTs (HS256) signed with a rotating key ring.

Stdlib only, so the worker library can read tokens without the server's dependencies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["read", "write"]

MAX_SEGMENT_LENGTH = 4096  # characters of a token's header or payload; bounds parsing work
CLOCK_SKEW = 60  # seconds a token's `iat`/`nbf` may lie ahead of this host's clock
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


VERIFIED_CACHE_SIZE = 10_000  # tokens remembered as correctly signed


class TokenError(Exception):
    """A token was refused. `code` is the protocol's error code, `status` the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Claims:
    channel: str
    scope: Scope
    url: str
    issued_at: int
    expires_at: int
    not_before: int | None = None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url without padding: one byte string has exactly one accepted spelling, so
    a token cannot be altered (`==`, `!!`, stray bits in the last character) and still verify."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def _json_segment(text: str) -> dict[str, Any]:
    if len(text) > MAX_SEGMENT_LENGTH:  # ours are a few hundred characters
        raise ValueError("token segment too long")
    try:
        value = json.loads(_b64decode(text))
    except RecursionError as exc:  # `[[[[…` nested past the parser's limit
        raise ValueError("token segment nested too deeply") from exc
    if not isinstance(value, dict):
        raise ValueError("segment is not a JSON object")
    return value


def read_claims_unverified(token: str) -> Claims:
    """The claims of a token without checking its signature.

    For backends that hold a token but not the secret (the worker writing through Redis):
    they trust whoever gave them the token, exactly as the broker would after verifying it.
    """
    try:
        _header, payload, _signature = token.split(".")
        return _claims_from(_json_segment(payload))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise TokenError("token_invalid", "The token is not a well-formed Unbroken token.") from exc


def _claims_from(payload: Mapping[str, Any]) -> Claims:
    scope = payload["scope"]
    if scope not in ("read", "write"):
        raise ValueError(f"unknown scope {scope!r}")
    return Claims(
        channel=str(payload["ch"]),
        scope=scope,
        url=str(payload.get("url", "")),
        issued_at=_seconds(payload["iat"]),
        expires_at=_seconds(payload["exp"]),
        not_before=_seconds(payload["nbf"]) if "nbf" in payload else None,
    )


def _seconds(value: Any) -> int:
    """A JWT NumericDate: a finite number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a time in seconds: {value!r}")
    return int(value)


class KeyRing:
    """Signs with the first key; verifies with any key, chosen by the token's `kid`."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._keys = dict(keys)
        self.signing_kid = next(iter(self._keys))
        # Tokens whose signature checked out, with their claims: a reader or writer sends the
        # same token on every request, and the HMAC, base64 and JSON of a check were an eighth
        # of a write's CPU. The keys never change in a ring, so an entry never goes stale; the
        # time checks (exp, nbf, iat) still run on every use.
        self._verified: dict[str, Claims] = {}

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """`kid1:secret1,kid2:secret2` (a bare `secret` gets the kid `k1`)."""
        keys: dict[str, bytes] = {}
        for index, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
            kid, sep, secret = part.partition(":")
            if not sep:
                kid, secret = f"k{index + 1}", part
            if not kid or not secret:
                raise ValueError(f"bad key entry {part!r}: expected kid:secret")
            keys[kid] = secret.encode()
        return cls(keys)

    def sign(self, channel: str, scope: Scope, url: str, ttl: int, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        header = {"alg": "HS256", "typ": "JWT", "kid": self.signing_kid}
        payload = {"ch": channel, "scope": scope, "url": url, "iat": issued, "exp": issued + ttl}
        signing_input = (
            _b64encode(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64encode(json.dumps(payload, separators=(",", ":")).encode())
        )
        digest = hmac.new(self._keys[self.signing_kid], signing_input.encode(), hashlib.sha256)
        return signing_input + "." + _b64encode(digest.digest())

    def verify(self, token: str, now: float | None = None) -> Claims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self._check_signature(token)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()  # crude, and rare: a cache miss only costs a check
            self._verified[token] = claims
        now = time.time() if now is None else now
        if claims.expires_at <= now:
            raise TokenError("token_expired", "The token has expired; open a new channel.")
        if claims.issued_at > now + CLOCK_SKEW:
            raise TokenError("token_invalid", "The token claims to be issued in the future.")
        if claims.not_before is not None and claims.not_before > now + CLOCK_SKEW:
            raise TokenError("token_not_yet_valid", "The token is not valid yet (its nbf).")
        return claims

    def _check_signature(self, token: str) -> Claims:
        try:
            header_text, payload_text, signature_text = token.split(".")
            header = _json_segment(header_text)
            key = self._keys.get(str(header.get("kid")))
            if key is None or header.get("alg") != "HS256":
                raise TokenError("token_invalid", "The token was not signed by this broker.")
            expected = hmac.new(
                key, f"{header_text}.{payload_text}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(expected, _b64decode(signature_text)):
                raise TokenError("token_invalid", "The token's signature does not match.")
            return _claims_from(_json_segment(payload_text))
        except TokenError:
            raise
        except (ValueError, KeyError, TypeError, OverflowError) as exc:  # OverflowError: 1e400
            raise TokenError(
                "token_invalid", "The token is not a well-formed Unbroken token."
            ) from exc

    def authorize(self, token: str, channel: str, scope: Scope) -> Claims:
        """Verify `token` and check it grants `scope` on `channel` (write implies read)."""
        claims = self.verify(token)
        if claims.channel != channel:
            raise TokenError(
                "token_wrong_channel", "This token belongs to another channel.", status=403
            )
        if scope == "write" and claims.scope != "write":
            raise TokenError(
                "token_wrong_scope",
                "This is a read token; writing needs the channel token given to the backend.",
                status=403,
            )
        return claims
