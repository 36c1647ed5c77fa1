"""Builds the configured :class:`~workers.embedding.Embedder` (shared by the retrieval and cache stages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from schemas.errors import ConfigError
from streams.settings import Settings
from workers.embedding import Embedder, HashingEmbedder, OpenAICompatibleEmbedder
from workers.static_embedding import StaticEmbedder


@asynccontextmanager
async def open_embedder(settings: Settings) -> AsyncIterator[Embedder]:
    if settings.embedder == "hashing":
        yield HashingEmbedder(dim=settings.embedding_dim)
        return
    if settings.embedder == "static":
        if settings.embedding_dim not in (64, 128, 256):
            raise ConfigError(f"TOLLWAY_EMBEDDER=static needs TOLLWAY_EMBEDDING_DIM 64, 128 or 256, not "
                              f"{settings.embedding_dim}")
        # ~0.2 s to read 16 MB of weights: off the event loop, the worker may already serve other stages.
        yield await asyncio.to_thread(StaticEmbedder, settings.embedding_dim)
        return
    if not settings.embedding_url:
        raise ConfigError("TOLLWAY_EMBEDDER=openai needs TOLLWAY_EMBEDDING_URL (e.g. http://127.0.0.1:8000)")
    key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None
    async with httpx.AsyncClient(base_url=settings.embedding_url, timeout=10.0) as client:
        yield OpenAICompatibleEmbedder(client, model=settings.embedding_model, dim=settings.embedding_dim,
                                       api_key=key)
