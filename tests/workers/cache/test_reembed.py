"""Vectors of two embedders never mix, and re-embedding moves a tenant's semantic index to the new model."""

from __future__ import annotations

import numpy as np

from schemas.envelope import ModelResult
from streams.clients.envelopes import new_envelope
from workers.cache import stage as cache
from workers.cache.reembed import reembed
from workers.cache.stage import CacheContext
from workers.cache.store import LogRecord, MemoryCacheStore, RedisCacheStore, SemanticMirror, vector_space
from workers.embedding import HashingEmbedder


def test_each_vector_space_has_its_own_log_and_entries_are_shared() -> None:
    client = object()
    old = RedisCacheStore(client, namespace="t", vectors="hashing-v1-d256")  # type: ignore[arg-type]
    new = RedisCacheStore(client, namespace="t", vectors=vector_space(HashingEmbedder(dim=128)))
    assert old.log_key("acme") != new.log_key("acme")
    assert new.log_key("acme") == "t:cache:acme:log:hashing-v1-d128"
    assert old.entry_key("acme", "k") == new.entry_key("acme", "k")  # exact hits survive a model change


async def test_reembed_copies_live_records_with_the_new_model() -> None:
    now = 1_000_000
    old, new = MemoryCacheStore(now_ms=lambda: now), MemoryCacheStore(now_ms=lambda: now)
    stale = np.zeros(8, dtype=np.float32)  # vectors of another model (another dimension)
    await old.append_log("acme", [LogRecord("k1", "s", "How do I reset my password?", now + 10_000, stale),
                                  LogRecord("k2", "s", "gone", now - 1, stale)])
    model = HashingEmbedder(dim=64)
    result = await reembed(old, new, model, "acme", now_ms=now)
    assert (result.read, result.expired, result.written) == (2, 1, 1)
    (record,) = new.logs["acme"]
    assert (record.key, record.scope, record.expires_at_ms) == ("k1", "s", now + 10_000)
    np.testing.assert_allclose(record.vector, model.embed_sync(["How do I reset my password?"])[0])


async def test_reembedding_again_appends_nothing_twice() -> None:
    now = 1_000_000
    old, new = MemoryCacheStore(now_ms=lambda: now), MemoryCacheStore(now_ms=lambda: now)
    stale = np.zeros(8, dtype=np.float32)
    await old.append_log("acme", [LogRecord(f"k{i}", "s", f"question {i}?", now + 10_000, stale) for i in range(4)]
                         + [LogRecord("k0", "s", "question 0?", now + 10_000, stale)])  # a key logged twice
    model = HashingEmbedder(dim=64)
    first = await reembed(old, new, model, "acme", now_ms=now)
    again = await reembed(old, new, model, "acme", now_ms=now)  # a second run, or a rerun after a crash
    assert (first.written, first.present, again.written, again.present) == (4, 1, 0, 5)
    assert sorted(r.key for r in new.logs["acme"]) == ["k0", "k1", "k2", "k3"]


async def test_after_reembedding_a_rewording_hits_again() -> None:
    """The cache of the old model is unusable by the new one (other dimension) until it is re-embedded."""
    old_model, new_model = HashingEmbedder(dim=64), HashingEmbedder(dim=128)
    store = MemoryCacheStore()
    old_ctx = CacheContext(stage="cache", store=store, embedder=old_model, mirror=SemanticMirror(64))
    filled = new_envelope("How do I reset my password?", tenant="acme", budget_ms=10_000)
    filled.answer, filled.model = "Use the reset link.", ModelResult(model="m", cost_micros=500)
    await cache.fill([filled], old_ctx)

    new_store = MemoryCacheStore(entries=store.entries)  # same entries, the new model's (empty) log
    new_ctx = CacheContext(stage="cache", store=new_store, embedder=new_model, mirror=SemanticMirror(128))
    query = new_envelope("how can I reset my password please", tenant="acme", budget_ms=10_000)
    (query,) = await cache.process([query], new_ctx)
    assert query.cache is not None and query.cache.outcome == "miss"

    await reembed(store, new_store, new_model, "acme", now_ms=0)
    query = new_envelope("how can I reset my password please", tenant="acme", budget_ms=10_000)
    (query,) = await cache.process([query], new_ctx)
    assert query.cache is not None and query.cache.outcome == "hit" and query.answer == "Use the reset link."
