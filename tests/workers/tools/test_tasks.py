"""Tool steps per task, in memory and on the real Redis (idempotent by step id)."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from streams.settings import Settings
from workers.tools.tasks import MemoryTaskSteps, RedisTaskSteps, TaskSteps


async def counts(store: TaskSteps) -> list[int]:
    return [await store.count("acme", "job", step) for step in ("r1:1", "r1:2", "r1:1", "r2:1")] + \
        [await store.count("acme", "other-job", "r1:1"), await store.count("globex", "job", "r1:1")]


async def test_memory_steps() -> None:
    assert await counts(MemoryTaskSteps()) == [1, 2, 2, 3, 1, 1]


@pytest.mark.integration
async def test_redis_steps() -> None:
    settings = Settings()
    client = aioredis.Redis.from_url(settings.redis_url)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    try:
        assert await counts(RedisTaskSteps(client, prefix=prefix)) == [1, 2, 2, 3, 1, 1]
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
