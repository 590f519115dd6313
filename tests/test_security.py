"""Security edges over real sockets against a real broker process: admin access and CORS,
token strictness (canonical base64url, nbf, future iat), and idempotency-key namespaces."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.broker_process import BrokerProcess

SECRET = "sec:security-test-secret"
ADMIN = "security-admin-token"
# Every admin route: (method, path). `{id}` is replaced by a real channel id.
ADMIN_ROUTES = (
    ("GET", "/v1/channels"),
    ("GET", "/v1/admin/channels/{id}"),
    ("POST", "/v1/admin/channels/{id}/read-token"),
    ("GET", "/v1/admin/stats"),
    ("GET", "/metrics"),
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _open(session: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    async with session.post(url + "/v1/channels", json=body) as response:
        assert response.status == 201, await response.text()
        return dict(await response.json())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- admin routes -------------------------------------------------------------------------------


async def test_admin_routes_refuse_loopback_callers_when_no_admin_token_is_set(
    session: aiohttp.ClientSession,
) -> None:
    async with BrokerProcess("--secret", SECRET) as broker:
        opened = await _open(session, broker.url)
        for method, path in ADMIN_ROUTES:
            url = broker.url + path.format(id=opened["id"])
            async with session.request(method, url) as response:
                assert response.status == 403, (method, path, await response.text())
                body = await response.json()
                assert body["error"]["code"] == "admin_disabled", (method, path)
                assert "Access-Control-Allow-Origin" not in response.headers


async def test_admin_routes_need_the_token_and_send_no_cors(
    session: aiohttp.ClientSession,
) -> None:
    async with BrokerProcess("--secret", SECRET, "--admin-token", ADMIN) as broker:
        opened = await _open(session, broker.url)
        origin = {"Origin": "https://evil.example"}
        for method, path in ADMIN_ROUTES:
            url = broker.url + path.format(id=opened["id"])
            async with session.request(method, url, headers=origin) as response:
                assert response.status == 401, (method, path)
                assert (await response.json())["error"]["code"] == "token_missing"
            async with session.request(method, url, headers={**origin, **bearer("no")}) as r:
                assert (await r.json())["error"]["code"] == "admin_token_invalid"
            async with session.request(method, url, headers={**origin, **bearer(ADMIN)}) as r:
                assert r.status == 200, (method, path, await r.text())
                assert "Access-Control-Allow-Origin" not in r.headers, (method, path)
            preflight = {**origin, "Access-Control-Request-Method": method,
                         "Access-Control-Request-Headers": "authorization"}  # fmt: skip
            async with session.options(url, headers=preflight) as response:
                assert response.status >= 400, (method, path, response.status)
                assert "Access-Control-Allow-Origin" not in response.headers, (method, path)
                assert "Access-Control-Allow-Headers" not in response.headers, (method, path)
        # The public channel API keeps its CORS: browsers open channels and read them.
        preflight = {**origin, "Access-Control-Request-Method": "POST"}
        async with session.options(broker.url + "/v1/channels", headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        async with session.post(broker.url + "/v1/channels", json={}, headers=origin) as r:
            assert r.status == 201 and r.headers["Access-Control-Allow-Origin"] == "*"
        poll = opened["urls"]["poll"] + "?timeout=0"
        async with session.get(poll, headers={**origin, **bearer(opened["read_token"])}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_admin_open_lets_admin_in_without_a_token_and_warns(
    session: aiohttp.ClientSession, how: str
) -> None:
    args, env = (("--admin-open",), {}) if how == "flag" else ((), {"UNBROKEN_ADMIN_OPEN": "1"})
    async with BrokerProcess("--secret", SECRET, *args, env=env) as broker:
        opened = await _open(session, broker.url)
        for method, path in ADMIN_ROUTES:
            url = broker.url + path.format(id=opened["id"])
            async with session.request(method, url) as response:
                assert response.status == 200, (method, path, await response.text())
                assert "Access-Control-Allow-Origin" not in response.headers
        warnings = [line for line in broker.output().splitlines() if "WARNING" in line]
        assert any("--admin-open" in line for line in warnings), broker.output()


# --- tokens -------------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(payload: dict[str, Any], kid: str = "sec", secret: bytes = SECRET[4:].encode()) -> str:
    """A token signed with the broker's real key, carrying whatever claims the test wants."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


async def _status(session: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with session.get(url, headers=bearer(token)) as response:
        return response.status, await response.json()


def _noncanonical_last_char(signature: str) -> str:
    # 32 bytes take 43 characters whose last one carries 2 unused bits: setting them spells the
    # same bytes differently, which a lenient decoder accepts.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(signature[-1])
    assert index % 4 == 0, "a canonical last character has its unused bits clear"
    return signature[:-1] + alphabet[index | 1]


async def test_tokens_in_non_canonical_base64url_are_refused(
    session: aiohttp.ClientSession,
) -> None:
    async with BrokerProcess("--secret", SECRET) as broker:
        opened = await _open(session, broker.url)
        url = f"{broker.url}/v1/channels/{opened['id']}"
        token = opened["read_token"]
        assert (await _status(session, url, token))[0] == 200
        header, payload, signature = token.split(".")
        variants = {
            "padding": token + "==",
            "junk": token + "!!",
            "inner junk": f"{header}.{payload}.{signature[:10]}!{signature[10:]}",
            "unused bits": f"{header}.{payload}.{_noncanonical_last_char(signature)}",
            "padded payload": f"{header}.{payload}{'=' * (-len(payload) % 4) or '=='}.{signature}",
        }
        for name, variant in variants.items():
            assert variant != token
            status, body = await _status(session, url, variant)
            assert (status, body["error"]["code"]) == (401, "token_invalid"), name


async def test_tokens_honour_nbf_and_refuse_a_future_iat(session: aiohttp.ClientSession) -> None:
    async with BrokerProcess("--secret", SECRET) as broker:
        opened = await _open(session, broker.url)
        cid = opened["id"]
        url = f"{broker.url}/v1/channels/{cid}"
        now = int(time.time())

        def claims(**extra: int) -> dict[str, Any]:
            return {"ch": cid, "scope": "read", "url": broker.url, "iat": now,
                    "exp": now + 3600, **extra}  # fmt: skip

        assert (await _status(session, url, forge(claims())))[0] == 200  # the forge is right
        status, body = await _status(session, url, forge(claims(nbf=now + 600)))
        assert (status, body["error"]["code"]) == (401, "token_not_yet_valid")
        assert (await _status(session, url, forge(claims(nbf=now - 5))))[0] == 200
        status, body = await _status(session, url, forge(claims(iat=now + 600)))
        assert (status, body["error"]["code"]) == (401, "token_invalid")
        # A little clock skew between hosts is tolerated.
        assert (await _status(session, url, forge(claims(iat=now + 20, nbf=now + 20))))[0] == 200


async def test_idempotency_keys_and_writer_ids_never_collide(
    session: aiohttp.ClientSession,
) -> None:
    async with BrokerProcess("--secret", SECRET) as broker:
        opened = await _open(session, broker.url)
        write = bearer(opened["channel_token"]["token"])
        messages = opened["urls"]["messages"]
        body = {"data": "from writer key:abc", "writer": "key:abc", "seq": 1}
        async with session.post(messages, json=body, headers=write) as response:
            assert response.status == 201
        keyed = {**write, "Idempotency-Key": "abc"}
        async with session.post(messages, json={"data": "keyed"}, headers=keyed) as response:
            assert response.status == 201, await response.text()
            assert (await response.json())["duplicate"] is False
        async with session.post(messages, json={"data": "again"}, headers=keyed) as response:
            assert response.status == 200 and (await response.json())["duplicate"] is True
        poll = opened["urls"]["poll"] + "?timeout=0"
        async with session.get(poll, headers=bearer(opened["read_token"])) as response:
            events = (await response.json())["events"]
        assert [e["data"] for e in events] == ["from writer key:abc", "keyed"]


# --- secrets from files -------------------------------------------------------------------------


async def test_secret_and_admin_token_from_files(
    session: aiohttp.ClientSession, tmp_path: Any
) -> None:
    secret_file, admin_file = tmp_path / "secret", tmp_path / "admin"
    secret_file.write_text(SECRET + "\n")  # as `echo` writes it: the newline is not the secret
    admin_file.write_text(ADMIN + "\n")
    env = {"UNBROKEN_SECRET_FILE": str(secret_file)}
    async with BrokerProcess("--admin-token-file", str(admin_file), env=env) as broker:
        assert "UNBROKEN_SECRET" not in broker.output()  # no "random key" warning
        opened = await _open(session, broker.url)
        now = int(time.time())
        claims = {"ch": opened["id"], "scope": "read", "url": broker.url, "iat": now,
                  "exp": now + 60}  # fmt: skip
        url = f"{broker.url}/v1/channels/{opened['id']}"
        assert (await _status(session, url, forge(claims)))[0] == 200
        async with session.get(broker.url + "/v1/admin/stats", headers=bearer(ADMIN)) as r:
            assert r.status == 200
    missing = BrokerProcess("--secret-file", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="cannot read the --secret-file"):
        await missing.start()
    await missing.__aexit__(None, None, None)


async def test_tokens_with_non_ascii_characters_are_refused_not_a_500(
    session: aiohttp.ClientSession,
) -> None:
    args = ("--secret", SECRET, "--admin-token", ADMIN, "--open-policy", "key", "--app-key", "k")
    async with BrokerProcess(*args) as broker:
        weird = "é-☃-ключ"
        async with session.post(broker.url + "/v1/channels", params={"token": weird}) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (403, "app_key_invalid")
        async with session.post(broker.url + "/v1/channels", headers=bearer("k")) as r:
            assert r.status == 201
            opened = await r.json()
        url = f"{broker.url}/v1/channels/{opened['id']}"
        async with session.get(url, params={"token": weird}) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (401, "token_invalid")
        async with session.get(broker.url + "/v1/admin/stats", params={"token": weird}) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (403, "admin_token_invalid")


async def test_malformed_token_payloads_are_401_not_500(session: aiohttp.ClientSession) -> None:
    async with BrokerProcess("--secret", SECRET) as broker:
        opened = await _open(session, broker.url)
        url = f"{broker.url}/v1/channels/{opened['id']}"
        header = _b64(json.dumps({"alg": "HS256", "kid": "sec"}).encode())
        now = int(time.time())
        variants = {
            # parsed before the signature is checked: must not reach the recursion limit
            "nested header": _b64(b"[" * 3000) + ".e30.x",
            "long header": _b64(b'{"a":"' + b"x" * 6000 + b'"}') + ".e30.x",
            # signed with the real key, claims a float too large for an int
            "huge iat": forge({"ch": opened["id"], "scope": "read", "iat": 1e400, "exp": now + 60}),
            "bool exp": forge({"ch": opened["id"], "scope": "read", "iat": now, "exp": True}),
            "no signature": f"{header}.e30.",
        }
        for name, token in variants.items():
            status, body = await _status(session, url, token)
            assert (status, body["error"]["code"]) == (401, "token_invalid"), name
