"""Broker URLs as people type them: `localhost:8080`, `http://b1:8080/`, `http://a,http://b`.

One place for the Python client and the broker's own client commands (`channels`, `inspect`),
so both accept the same spellings and explain the same mistakes.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def broker_url(text: str) -> str:
    """`text` as a base URL without a trailing slash; `http://` is assumed when no scheme is
    given (the README's curl lines write `localhost:8080`). ValueError says what to type."""
    value = text.strip()
    if not value:
        raise ValueError("the broker URL is empty: pass e.g. http://localhost:8080")
    if "://" not in value:
        value = "http://" + value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not a broker URL ({exc}): pass e.g. http://localhost:8080"
        ) from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"{text!r}: a broker URL starts with http:// or https:// "
            f"(not {parts.scheme}://), e.g. http://localhost:8080"
        )
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host: pass e.g. http://localhost:8080")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a broker URL has no ?query or #fragment")
    return value.rstrip("/")


def broker_urls(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """One or several broker URLs (a list, or one string separated by commas), each checked."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [broker_url(item) for item in items if item.strip()]
    if not urls:
        raise ValueError("no broker URL given: pass e.g. http://localhost:8080")
    return urls
