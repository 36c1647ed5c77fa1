"""Batched top-k, tenant isolation, ACL labels and regions; the LSH shortlist agrees with a full scan."""

from __future__ import annotations

import numpy as np

from workers.embedding import HashingEmbedder, l2_normalise
from workers.vector_index import IndexedChunk, MemoryVectorIndex, VectorMatrix, Visibility

EMBED = HashingEmbedder()


def _index(tenant: str, texts: dict[str, str], **extra: object) -> MemoryVectorIndex:
    index = MemoryVectorIndex(EMBED.dim)
    chunks = [IndexedChunk(chunk_id=cid, doc_id=cid.split("#")[0], text=t, **extra)  # type: ignore[arg-type]
              for cid, t in texts.items()]
    index.upsert(tenant, chunks, EMBED.embed_sync([c.text for c in chunks]))
    return index


def test_batch_top_k_best_first() -> None:
    index = _index("acme", {"refund#0": "Refunds are possible within 30 days of purchase.",
                            "keys#0": "API keys can be rotated from the dashboard.",
                            "onboarding#0": "New users start with the onboarding checklist."})
    queries = EMBED.embed_sync(["how do refunds work", "rotate my API key"])
    hits = index.search("acme", queries, 2, [Visibility()] * 2)
    assert [h[0].chunk.chunk_id for h in hits] == ["refund#0", "keys#0"]
    assert all(len(h) == 2 and h[0].score >= h[1].score for h in hits)


def test_other_tenant_sees_nothing() -> None:
    index = _index("acme", {"refund#0": "Refunds are possible within 30 days."})
    assert index.search("globex", EMBED.embed_sync(["refunds"]), 3, [Visibility()]) == [[]]


def test_labels_and_regions() -> None:
    index = MemoryVectorIndex(EMBED.dim)
    chunks = [IndexedChunk("pub#0", "pub", "salary bands are public"),
              IndexedChunk("hr#0", "hr", "salary bands for engineers", labels=frozenset({"hr"})),
              IndexedChunk("eu#0", "eu", "salary bands in the EU office", region="eu")]
    index.upsert("acme", chunks, EMBED.embed_sync([c.text for c in chunks]))
    query = EMBED.embed_sync(["salary bands"] * 3)
    hits = index.search("acme", query, 5, [Visibility(), Visibility(labels=frozenset({"hr", "x"})),
                                           Visibility(regions=frozenset({"us"}))])
    assert {h.chunk.chunk_id for h in hits[0]} == {"pub#0", "eu#0"}
    assert {h.chunk.chunk_id for h in hits[1]} == {"pub#0", "hr#0", "eu#0"}
    assert {h.chunk.chunk_id for h in hits[2]} == {"pub#0"}


def test_upsert_replaces_and_remove_hides() -> None:
    index = _index("acme", {"a#0": "old text about billing"})
    index.upsert("acme", [IndexedChunk("a#0", "a", "new text about shipping")], EMBED.embed_sync(["shipping"]))
    assert index.size("acme") == 1
    (hits,) = index.search("acme", EMBED.embed_sync(["shipping"]), 3, [Visibility()])
    assert [h.chunk.text for h in hits] == ["new text about shipping"]
    assert index.remove("acme", ["a#0"]) == 1
    assert index.search("acme", EMBED.embed_sync(["shipping"]), 3, [Visibility()]) == [[]]


def test_lsh_shortlist_finds_near_duplicates_like_a_full_scan() -> None:
    rng = np.random.default_rng(1)
    base = l2_normalise(rng.standard_normal((3000, 64)))
    exact, lsh = VectorMatrix(64), VectorMatrix(64, dtype=np.float16, brute_force_limit=100)
    exact.add(base)
    lsh.add(base)
    queries = l2_normalise(base[:200] + rng.standard_normal((200, 64)).astype(np.float32) * 0.04)
    _, exact_rows = exact.search(queries, 1)
    scores, lsh_rows = lsh.search(queries, 1)
    assert (exact_rows[:, 0] == np.arange(200)).all()
    assert (lsh_rows[:, 0] == exact_rows[:, 0]).mean() >= 0.99
    assert scores[:, 0].min() > 0.9
    lsh.remove([0])
    _, rows = lsh.search(queries[:1], 1)
    assert rows[0, 0] != 0
