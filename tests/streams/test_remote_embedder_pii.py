"""Regression: with a remote embedder, no raw PII leaves the pipeline, from any producer.

The HTTP ingress once built its envelopes by hand with the default route (retrieval first), so with
``TOLLWAY_EMBEDDER=openai`` the unredacted prompt went to the remote embedder. Every producer now makes envelopes
with :class:`EnvelopeFactory` (policy before retrieval when the embedder is remote), and the retrieval stage sends
any request the policy stage has not governed to policy first — so even a producer that writes the wrong route
cannot leak. Driven through the real runner code over in-memory topics (``streams.testing``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas.envelope import DEFAULT_ROUTE, Envelope, Status
from schemas.policy import PolicyDocument, parse_policy
from streams.clients.envelopes import EnvelopeFactory, new_envelope
from streams.settings import Settings, load_settings
from streams.testing import run_pipeline
from workers.cache.stage import CacheContext
from workers.embedding import HashingEmbedder, Vectors
from workers.policy import PolicyContext, StaticPolicy
from workers.retrieval import RetrievalContext
from workers.vectors.chunks import IndexedChunk
from workers.vectors.index import MemoryVectorIndex

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
PROMPT = f"My email is {EMAIL} and my card is {CARD}. What is the refund policy?"


class RecordingEmbedder:
    """A stand-in for a remote embedding service: records every text it is sent."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(dim=64)
        self.received: list[str] = []

    @property
    def name(self) -> str:
        return "recording-remote"

    @property
    def dim(self) -> int:
        return self.inner.dim

    async def embed(self, texts: list[str]) -> Vectors:
        self.received.extend(texts)
        return await self.inner.embed(texts)


def policy_document() -> PolicyDocument:
    return parse_policy({"version": "v1", "embedder": {"remote": True},
                         "tenants": {"acme": {"require_principal": False, "pii": {"default": "redact"}}}})


@pytest.fixture
def remote_settings() -> Settings:
    return load_settings(topic_prefix="t", embedder="openai", embedding_url="http://127.0.0.1:9")


async def run(envs: list[Envelope]) -> tuple[RecordingEmbedder, Any]:
    embedder = RecordingEmbedder()
    index = MemoryVectorIndex(embedder.dim)
    chunk = IndexedChunk(chunk_id="refunds#1", doc_id="refunds", text="Refunds are issued within 30 days.")
    index.upsert("acme", [chunk], await embedder.inner.embed([chunk.text]))
    contexts = {
        "retrieval": RetrievalContext(stage="retrieval", index=index, embedder=embedder, embedder_remote=True),
        "policy": PolicyContext(stage="policy", policy=StaticPolicy(policy_document())),
        "cache": CacheContext(stage="cache", embedder=embedder),
    }
    result = await run_pipeline(envs, contexts=contexts)
    return embedder, result


def producers(settings: Settings) -> dict[str, Envelope]:
    """One envelope per producer's way of making it, plus one with the route a careless producer writes."""
    source = StaticPolicy(policy_document())
    careless = new_envelope(PROMPT, tenant="acme", settings=load_settings(topic_prefix="t"))
    careless.route = list(DEFAULT_ROUTE)  # retrieval first, as the HTTP ingress once did
    return {
        "sdk/ingress factory": EnvelopeFactory(settings, policy=source).new(PROMPT, tenant="acme"),
        "backfill/cli (settings only)": new_envelope(PROMPT, tenant="acme", settings=settings),
        "policy says remote, settings local": EnvelopeFactory(load_settings(topic_prefix="t"), policy=source).new(
            PROMPT, tenant="acme"),
        "careless producer": careless,
    }


def test_the_factory_routes_policy_first_when_the_embedder_is_remote(remote_settings: Settings) -> None:
    for name, env in producers(remote_settings).items():
        if name != "careless producer":
            assert env.route[:2] == ["policy", "retrieval"], name


@pytest.mark.parametrize("producer", ["sdk/ingress factory", "backfill/cli (settings only)",
                                      "policy says remote, settings local", "careless producer"])
async def test_no_raw_pii_reaches_a_remote_embedder(remote_settings: Settings, producer: str) -> None:
    env = producers(remote_settings)[producer]
    embedder, result = await run([env])
    assert embedder.received, "the embedder was used (retrieval and cache)"
    for text in embedder.received:
        assert EMAIL not in text and CARD not in text and "4111111111111111" not in text, text
    response = result.responses[env.request_id]
    assert response.status is Status.OK
    stages = [hop.stage for hop in response.hops]
    last_retrieval = len(stages) - 1 - stages[::-1].index("retrieval")  # an earlier retrieval hop only forwarded
    assert stages.index("policy") < last_retrieval < stages.index("cache"), stages


async def test_a_local_embedder_keeps_the_default_route() -> None:
    env = new_envelope("hello there", tenant="acme", settings=load_settings(topic_prefix="t"))
    assert env.route == list(DEFAULT_ROUTE)
    result = await run_pipeline([env])
    assert result.responses[env.request_id].status is Status.OK
    assert np.isfinite(result.responses[env.request_id].cost_micros)
