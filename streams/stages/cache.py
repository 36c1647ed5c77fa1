"""Wiring for the cache stage: a Redis connection pool, the cache store, the embedder, its pair verifier and this
process's mirror."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from streams.runtime.connections import redis_client
from streams.settings import Settings
from streams.stages.embedders import open_embedder
from workers.cache.stage import CacheContext
from workers.cache.store import RedisCacheStore, SemanticMirror, vector_space
from workers.cache.verifier import load_verifier
from workers.context import StageContext, derive


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[CacheContext]:
    client = redis_client(settings)
    try:
        async with open_embedder(settings) as embedder:
            yield derive(
                CacheContext, base,
                store=RedisCacheStore(client, namespace=settings.topic_prefix, vectors=vector_space(embedder)),
                embedder=embedder,
                mirror=SemanticMirror(embedder.dim), semantic_threshold=settings.cache_semantic_threshold,
                default_ttl_s=settings.cache_ttl_s, max_ttl_s=settings.cache_max_ttl_s,
                verifier=load_verifier(embedder) if settings.cache_verifier else None,
            )
    finally:
        await client.aclose()
