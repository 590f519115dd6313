from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import private_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis started for this test session; skips the test when none can be had."""
    with private_redis() as url:
        if url is None:
            pytest.skip("no redis-server binary and no UNBROKEN_TEST_REDIS_URL")
        yield url
