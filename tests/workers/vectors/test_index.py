"""The retrieval index: batched top-k, tenant isolation, ACL labels and regions, upsert and remove."""

from __future__ import annotations

from workers.embedding import HashingEmbedder
from workers.vectors.chunks import IndexedChunk
from workers.vectors.index import MemoryVectorIndex
from workers.vectors.visibility import Visibility

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
