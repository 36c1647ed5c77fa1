"""Wiring for the retrieval stage: the configured embedder, the tenant index materialised from Kafka, session memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from streams.followers.index import IndexMaterialiser
from streams.runtime.connections import redis_client
from streams.settings import Settings
from streams.stages.embedders import open_embedder
from workers.cache.verifier import load_verifier
from workers.context import StageContext, derive
from workers.memory import RedisMemory
from workers.policy import LOCAL_EMBEDDERS
from workers.retrieval import RetrievalContext
from workers.vectors.index import MemoryVectorIndex


@asynccontextmanager
async def open_context(settings: Settings, base: StageContext) -> AsyncIterator[RetrievalContext]:
    client = redis_client(settings)
    try:
        async with open_embedder(settings) as embedder:
            index = MemoryVectorIndex(embedder.dim)
            materialiser = IndexMaterialiser(settings, index, embedder)
            await materialiser.start()
            try:
                yield derive(
                    RetrievalContext, base, index=index, embedder=embedder,
                    memory=RedisMemory(client, namespace=settings.topic_prefix, ttl_s=settings.memory_ttl_s,
                                       max_turns=settings.memory_max_turns),
                    top_k=settings.retrieval_top_k, min_score=settings.retrieval_min_score,
                    embedder_remote=settings.embedder not in LOCAL_EMBEDDERS,
                    reranker=load_verifier(embedder) if settings.retrieval_rerank else None,
                )
            finally:
                await materialiser.stop()
    finally:
        await client.aclose()
