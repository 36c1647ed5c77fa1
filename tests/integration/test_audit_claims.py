"""The audit stage's claim store on the real Redis: a batch's confirmations ride in its claim's round trip."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from streams.settings import Settings
from workers.audit.claims import RedisClaimStore

pytestmark = pytest.mark.integration


async def test_confirmations_ride_with_the_next_claim_and_survive_a_lost_script(settings: Settings) -> None:
    client = aioredis.Redis.from_url(settings.redis_url)
    namespace = f"claims-{uuid.uuid4().hex[:8]}"
    store = RedisClaimStore(client, namespace=namespace, ttl_s=60, stale_claim_ms=1000)
    other = RedisClaimStore(client, namespace=namespace, ttl_s=60, stale_claim_ms=1000)
    try:
        assert await store.claim(["a", "b"], "chain-1", now_ms=0) == ["new", "new"]
        assert await store.claim(["c"], "chain-1", now_ms=0, confirm=["a"]) == ["new"]  # first use: script loaded
        assert await client.get(f"{namespace}:audit:claim:a") == b"d|chain-1"
        await client.script_flush()  # Redis lost the script: the confirmations still land, the claim still answers
        assert await store.claim(["d"], "chain-1", now_ms=0, confirm=["b", "c"]) == ["new"]
        assert await client.get(f"{namespace}:audit:claim:c") == b"d|chain-1"
        # a confirmed key is done for every chain; a pending one of a live chain is skipped, a stale one taken over
        assert await other.claim(["a", "d"], "chain-2", now_ms=500, confirm=[]) == ["skip", "skip"]
        assert await other.claim(["d", "e"], "chain-2", now_ms=5000, confirm=[]) == ["new", "new"]
        assert await other.claim([], "chain-2", now_ms=5000, confirm=["d"]) == []  # confirmations alone
        assert await client.get(f"{namespace}:audit:claim:d") == b"d|chain-2"
    finally:
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
