from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from streams.settings import Settings
from workers.tools.builtins import RedisTicketStore, seed_demo_tickets


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def tickets(settings: Settings) -> AsyncIterator[RedisTicketStore]:
    """The demo tickets of tenant ``acme`` in Redis under the test's topic prefix, removed afterwards (the tools
    integration tests; ``settings`` is the requesting module's, so its policy holds)."""
    client = aioredis.Redis.from_url(settings.redis_url)
    store = RedisTicketStore(client, prefix=settings.topic_prefix)
    await seed_demo_tickets(store, "acme")
    yield store
    keys = [k async for k in client.scan_iter(match=f"{settings.topic_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
