"""The broker's plain request routes the client uses: open a channel, cancel one.

The streaming routes (reading) are in transports.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
from yarl import URL

from broker.urls import broker_urls
from client_sdk.errors import (
    BrokerError,
    InvalidChannelReference,
    ProtocolViolation,
    TransportError,
)
from client_sdk.transports import Target, broker_error

BrokerURLs = str | Sequence[str]  # one URL, several (a list, or one string with commas)


def broker_list(value: BrokerURLs) -> list[str]:
    """The broker URLs in `value`, each checked (`localhost:8080` means http://...)."""
    try:
        return broker_urls(value if isinstance(value, str) else tuple(value))
    except ValueError as exc:
        raise InvalidChannelReference(str(exc)) from exc


async def create_channel(
    session: aiohttp.ClientSession,
    broker_url: str,
    *,
    name: str | None = None,
    app_key: str | None = None,
    open_timeout: float = 10.0,
) -> dict[str, Any]:
    """`POST /v1/channels`: the open response (id, read_token, channel_token, ...)."""
    url = URL(broker_list(broker_url)[0]) / "v1" / "channels"
    headers = {"Authorization": f"Bearer {app_key}"} if app_key else {}
    body = {"name": name} if name is not None else {}
    try:
        async with asyncio.timeout(open_timeout):
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status != 201 and resp.status != 200:
                    raise await broker_error(resp)
                info = await resp.json(content_type=None)
    except TimeoutError as exc:
        raise TransportError(
            f"the broker at {broker_url} did not answer within {open_timeout:g}s"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"cannot reach the broker at {broker_url}: {exc}") from exc
    except ValueError as exc:
        raise ProtocolViolation(f"the broker's open response is not JSON: {exc}") from exc
    if not isinstance(info, dict) or "id" not in info or "read_token" not in info:
        raise ProtocolViolation(f"unexpected open response: {info!r:.200}")
    return info


async def cancel_channel(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    reason: str | None = None,
    *,
    first: Target | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """`POST /v1/channels/{id}/cancel` on the first broker that answers (cancelling is
    idempotent: a repeat answers `duplicate: true`)."""
    if reason is not None and not isinstance(reason, str):
        raise TypeError("the cancel reason is a string (at most 200 characters) or None")
    order = list(targets)
    if first is not None and first in order:
        start = order.index(first)
        order = order[start:] + order[:start]
    body = {"reason": reason} if reason is not None else {}
    error: BaseException | None = None
    for target in order:
        try:
            async with asyncio.timeout(timeout):
                async with session.post(
                    target.url("cancel"), json=body, headers=target.headers
                ) as resp:
                    if resp.status not in (200, 201):
                        raise await broker_error(resp)
                    answer = await resp.json(content_type=None)
        except TimeoutError as exc:
            error = TransportError(f"cancel: {target.broker_url} did not answer in {timeout:g}s")
            error.__cause__ = exc
            continue
        except BrokerError as exc:
            if exc.status != 503:
                raise
            error = exc
            continue
        except (aiohttp.ClientError, OSError) as exc:
            error = TransportError(f"cancel: cannot reach {target.broker_url}: {exc}")
            error.__cause__ = exc
            continue
        except ValueError as exc:
            raise ProtocolViolation(f"cancel: the answer is not JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise ProtocolViolation(f"cancel: unexpected answer {answer!r:.200}")
        return answer
    assert error is not None
    raise error
