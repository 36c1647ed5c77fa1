"""Wiring for the cache stage: a Redis connection pool, the cache store, the embedder and this process's mirror."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import ConnectionPool, Redis

from streams.settings import Settings
from streams.stages.embedders import open_embedder
from workers.cache.stage import CacheContext
from workers.cache.store import RedisCacheStore, SemanticMirror
from workers.context import StageContext


def redis_client(settings: Settings) -> Redis:
    """A pooled client with short timeouts: on the request path a slow Redis must become a miss, not a stall."""
    timeout_s = settings.redis_timeout_ms / 1000
    pool = ConnectionPool.from_url(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                   max_connections=64, health_check_interval=30)
    return Redis(connection_pool=pool)


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[CacheContext]:
    client = redis_client(settings)
    try:
        async with open_embedder(settings) as embedder:
            yield CacheContext(
                stage=base.stage, worker_id=base.worker_id, clock=base.clock, publisher=base.publisher,
                topic_prefix=base.topic_prefix,
                store=RedisCacheStore(client, namespace=settings.topic_prefix), embedder=embedder,
                mirror=SemanticMirror(embedder.dim), semantic_threshold=settings.cache_semantic_threshold,
                default_ttl_s=settings.cache_ttl_s, max_ttl_s=settings.cache_max_ttl_s,
            )
    finally:
        await client.aclose()
