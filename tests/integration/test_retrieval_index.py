"""The retrieval index on the real broker: chunks published to the compacted topic are what workers search."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.clients.envelopes import new_envelope
from streams.followers.index import IndexMaterialiser, chunk_file, publish, read_index
from streams.runtime.topics import ensure_topics
from streams.settings import Settings
from streams.stages.embedders import open_embedder
from workers import retrieval
from workers.retrieval import RetrievalContext
from workers.vectors.index import MemoryVectorIndex

pytestmark = pytest.mark.integration
CORPUS = Path(__file__).resolve().parents[2] / "infra" / "corpus"


async def _materialise(settings: Settings) -> tuple[IndexMaterialiser, RetrievalContext]:
    async with open_embedder(settings) as embedder:
        index = MemoryVectorIndex(embedder.dim)
        materialiser = IndexMaterialiser(settings, index, embedder)
        await materialiser.start()
        return materialiser, RetrievalContext(stage="retrieval", index=index, embedder=embedder)


async def test_publish_materialise_search_and_remove(settings: Settings) -> None:
    await ensure_topics(settings)
    chunks = [c for tenant in ("acme", "globex") for f in sorted((CORPUS / tenant).glob("*.md"))
              for c in chunk_file(f, tenant=tenant)]
    await publish(settings, chunks)

    # A fresh process rebuilds the same index from the topic.
    materialiser, ctx = await _materialise(settings)
    try:
        assert ctx.index.size("acme") == sum(c.tenant == "acme" for c in chunks)
        batch = [new_envelope("How long do I have to get a refund on an annual plan?", tenant="acme",
                              settings=settings),
                 new_envelope("Is water damage covered by the warranty?", tenant="globex", settings=settings)]
        acme, globex = await retrieval.process(batch, ctx)
        assert acme.retrieval and acme.retrieval.passages[0].doc_id.startswith("refund-policy.md#")
        assert globex.retrieval and globex.retrieval.passages[0].doc_id.startswith("warranty.md#")
        assert all(not p.doc_id.startswith(("warranty", "shipping")) for p in acme.retrieval.passages)

        # A tombstone published while the worker runs reaches its index.
        await publish(settings, [], [(c.tenant, c.chunk_id) for c in chunks if c.doc_id == "warranty.md"])
        assert (await read_index(settings)).keys().isdisjoint({f"globex/{c.chunk_id}" for c in chunks
                                                               if c.doc_id == "warranty.md"})
        expected = sum(c.tenant == "globex" and c.doc_id != "warranty.md" for c in chunks)
        for _ in range(500):  # wait on the condition (≤ 10 s), not for a fixed time
            if ctx.index.size("globex") == expected:
                break
            await asyncio.sleep(0.02)
        assert ctx.index.size("globex") == expected
    finally:
        await materialiser.stop()
