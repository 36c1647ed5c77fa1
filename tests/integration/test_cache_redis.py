"""The cache on the real Redis and through the pipeline: sharing across processes, isolation, near misses, outage."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
from redis.asyncio import Redis

from schemas.envelope import ModelResult, Status
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.settings import Settings
from streams.stages.cache import redis_client
from workers.cache import stage as cache
from workers.cache.stage import CacheContext
from workers.cache.store import CacheEntry, CacheWrite, RedisCacheStore, SemanticMirror, vector_space
from workers.embedding import Embedder, HashingEmbedder
from workers.static_embedding import StaticEmbedder

pytestmark = pytest.mark.integration


@functools.cache
def _embedder(kind: str) -> Embedder:
    return StaticEmbedder() if kind == "static" else HashingEmbedder()


def _ctx(settings: Settings, client: Redis) -> CacheContext:
    """One context per simulated worker process: same Redis, its own mirror, the workers' embedder (and so their
    vector space: entries filled with another model would be invisible to them)."""
    embedder = _embedder(settings.embedder)
    store = RedisCacheStore(client, namespace=settings.topic_prefix, vectors=vector_space(embedder))
    return CacheContext(stage="cache", store=store, embedder=embedder, mirror=SemanticMirror(embedder.dim))


async def _fill(ctx: CacheContext, settings: Settings, prompt: str, tenant: str, answer: str, cost: int) -> None:
    env = new_envelope(prompt, tenant=tenant, settings=settings)
    env.answer, env.model = answer, ModelResult(model="m-large", cost_micros=cost)
    await cache.fill([env], ctx)


async def test_entries_written_by_one_process_are_found_by_another(settings: Settings) -> None:
    client = redis_client(settings)
    try:
        writer, reader = _ctx(settings, client), _ctx(settings, client)
        await _fill(writer, settings, "How do I rotate my API key?", "acme", "Create, deploy, revoke.", 700)
        first = new_envelope("How can I rotate my API key", tenant="acme", settings=settings)
        first.route = ["model", "postprocess", "audit"]
        (first,) = await cache.process([first], reader)
        assert first.cache is not None and (first.cache.outcome, first.cache.kind) == ("hit", "semantic")
        assert first.cache.saved_micros == 700 and first.route == ["postprocess", "audit"]
        # a later write is picked up incrementally by the reader's mirror
        await _fill(writer, settings, "What is the annual refund window?", "acme", "30 days.", 500)
        (second,) = await cache.process([new_envelope("Please, what is the annual refund window?", tenant="acme",
                                                      settings=settings)], reader)
        assert second.cache is not None and second.cache.outcome == "hit" and second.answer == "30 days."
        assert reader.mirror.size("acme") == 2
    finally:
        await client.aclose()


async def test_a_batch_of_writes_sets_each_entrys_ttl_and_each_logs_longest(settings: Settings) -> None:
    client = redis_client(settings)
    try:
        store = RedisCacheStore(client, namespace=settings.topic_prefix, vectors="t-d4")
        vector = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)

        def write(tenant: str, key: str, expires: int) -> CacheWrite:
            entry = CacheEntry(answer=f"a {key}", cost_micros=1, model="m", prompt=f"p {key}", created_at_ms=1,
                               expires_at_ms=expires, request_id=f"r {key}")
            return CacheWrite(tenant=tenant, key=key, scope="s", entry=entry, vector=vector)

        await client.script_flush()  # the script is loaded on first use (and again after a Redis restart)
        await store.put([write("acme", "k1", 10), write("beta", "k2", 20), write("acme", "k3", 30)],
                        ttl_s=[100, 300, 200])
        assert [await client.ttl(store.entry_key(t, k)) for t, k in (("acme", "k1"), ("beta", "k2"),
                                                                     ("acme", "k3"))] == [100, 300, 200]
        assert await client.ttl(store.log_key("acme")) == await client.ttl(store.log_key("beta")) == 300
        await store.put([write("acme", "k4", 40)], ttl_s=[50])  # a shorter TTL never shortens the log's
        assert await client.ttl(store.log_key("acme")) == 300
        records, _ = await store.read_log("acme", "0")
        assert [(r.key, r.scope, r.prompt, r.expires_at_ms) for r in records] == [
            ("k1", "s", "p k1", 10), ("k3", "s", "p k3", 30), ("k4", "s", "p k4", 40)]
        assert all(r.vector.tolist() == vector.tolist() for r in records)
        assert (await store.get([("acme", "k3")]))[0] == write("acme", "k3", 30).entry
    finally:
        await client.aclose()


async def test_a_reader_catches_up_on_a_log_of_several_pages_and_tenants(settings: Settings,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # One round trip reads the exact keys and a page of each tenant's log; a full page is followed by the rest.
    monkeypatch.setattr("workers.cache.store._READ_COUNT", 2)
    client = redis_client(settings)
    try:
        writer, reader = _ctx(settings, client), _ctx(settings, client)
        questions = ["How do I rotate my API key?", "What is the refund window?", "Where do I download invoices?",
                     "How do I add a teammate?", "Which regions host my data?"]
        for i, question in enumerate(questions):
            await _fill(writer, settings, question, "acme", f"answer {i}", 100)
        await _fill(writer, settings, "Which regions host my data?", "globex", "globex answer", 100)
        out = await cache.process([new_envelope("Please, which regions host my data?", tenant=t, settings=settings)
                                   for t in ("acme", "globex")], reader)
        assert [(e.cache.outcome, e.cache.kind) for e in out if e.cache] == [("hit", "semantic")] * 2
        assert [e.answer for e in out] == ["answer 4", "globex answer"]
        assert (reader.mirror.size("acme"), reader.mirror.size("globex")) == (5, 1)
    finally:
        await client.aclose()


async def test_redis_down_is_a_miss_quickly(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    client = redis_client(down)
    try:
        ctx = _ctx(down, client)
        started = time.monotonic()
        (env,) = await cache.process([new_envelope("anything", tenant="acme", settings=down)], ctx)
        assert env.cache is not None and env.cache.outcome == "error" and "model" in env.route
        await _fill(ctx, down, "anything", "acme", "x", 1)  # logged, not raised
        assert time.monotonic() - started < 5
    finally:
        await client.aclose()


async def test_through_the_pipeline(pipeline: Settings) -> None:
    settings = pipeline
    client = redis_client(settings)
    try:
        await _fill(_ctx(settings, client), settings, "Is the annual plan refundable?", "acme",
                    "Yes, pro rata within 30 days.", 2500)
    finally:
        await client.aclose()
    envs = [new_envelope("Is the annual plan refundable?", tenant="acme", settings=settings),
            new_envelope("Could you tell me: is the annual plan refundable?", tenant="acme", settings=settings),
            new_envelope("Is the annual plan not refundable?", tenant="acme", settings=settings),
            new_envelope("Is the annual plan refundable?", tenant="globex", settings=settings)]
    async with TollwayClient(settings) as submitter:
        exact, semantic, opposite, other_tenant = await submitter.complete_envelopes(envs, timeout_s=60)
    for response in (exact, semantic):
        assert response.status is Status.CACHE_HIT, response
        assert response.answer == "Yes, pro rata within 30 days."
        assert "model" not in [h.stage for h in response.hops]
    assert opposite.status is Status.OK and opposite.answer != "Yes, pro rata within 30 days."
    assert other_tenant.status is Status.OK and other_tenant.answer != "Yes, pro rata within 30 days."
    assert "model" in [h.stage for h in other_tenant.hops]
