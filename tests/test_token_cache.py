"""Verified tokens are remembered (the signature check was an eighth of a write's CPU), but
every use still checks the time claims, and only the exact verified string is remembered."""

from __future__ import annotations

import pytest

from broker.tokens import KeyRing, TokenError


def test_a_remembered_token_still_expires_and_a_tampered_one_is_refused() -> None:
    ring = KeyRing({"k": b"secret-for-the-cache-test"})
    token = ring.sign("ch_1", "write", "http://b", ttl=60, now=1000)
    assert ring.verify(token, now=1001).channel == "ch_1"
    assert ring.verify(token, now=1002).channel == "ch_1"  # from the cache
    with pytest.raises(TokenError) as expired:
        ring.verify(token, now=1061)
    assert expired.value.code == "token_expired"
    with pytest.raises(TokenError) as early:
        KeyRing({"k": b"secret-for-the-cache-test"}).verify(token, now=900)
    assert early.value.code == "token_invalid"  # issued "in the future" (> 60 s skew)
    assert ring.verify(token, now=1003).channel == "ch_1"
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}AA"
    with pytest.raises(TokenError) as bad:
        ring.verify(forged, now=1004)
    assert bad.value.code == "token_invalid"
    other = KeyRing({"k": b"another-secret"})
    with pytest.raises(TokenError):
        other.verify(token, now=1001)  # each ring remembers only what it verified itself
