"""The pair verifier: features, the fitted weights, and its place after the guard in the cache stage."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from schemas.envelope import Envelope, ModelResult, PolicyDecision
from workers.cache import stage as cache
from workers.cache.semantic_guard import near_miss
from workers.cache.stage import CacheContext
from workers.cache.store import MemoryCacheStore, SemanticMirror
from workers.cache.verifier import FEATURES, PairVerifier, VerifierWeights, embedder_family, load_verifier
from workers.embedding import HashingEmbedder
from workers.static_embedding import StaticEmbedder

MakeEnv = Callable[..., Envelope]
CACHED = "How long do I have to ask for a refund on an annual plan?"
REWORDED = "how many days do I get to request a refund for a yearly plan"


@pytest.fixture(scope="module")
def static() -> StaticEmbedder:
    return StaticEmbedder()


@pytest.fixture(scope="module")
def verifier(static: StaticEmbedder) -> PairVerifier:
    found = load_verifier(static)
    assert found is not None
    return found


def test_weights_belong_to_the_static_embedder_only(static: StaticEmbedder) -> None:
    assert embedder_family("wordllama-l2_supercat-0.4.0.post1-d256-aa4eb8e1fcef") == "wordllama-l2_supercat-d256"
    assert load_verifier(HashingEmbedder()) is None
    assert load_verifier(StaticEmbedder(dim=64)) is None  # another vector space: weights were fit on 256-d


def test_features_are_finite_and_named(verifier: PairVerifier) -> None:
    features = verifier.features(REWORDED, CACHED, 0.8)
    assert features.shape == (len(FEATURES),) and np.isfinite(features).all()
    assert verifier.features("", CACHED, 0.0)[FEATURES.index("length_ratio")] == 0.0


def test_a_rewording_scores_above_a_different_question(verifier: PairVerifier) -> None:
    assert verifier.score(REWORDED, CACHED, 0.80) >= verifier.threshold
    assert verifier.score("Which fish live in Lake Baikal?", CACHED, 0.80) < verifier.threshold


def test_a_changed_weights_file_must_match_the_features(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "w.json"
    bad.write_text('{"features": ["cosine"], "embedder": "x", "mean": [0], "scale": [1], "coef": [1], '
                   '"intercept": 0, "threshold": 0.5}')
    with pytest.raises(ValueError, match="features"):
        VerifierWeights.load(bad)


async def _lookup(make_envelope: MakeEnv, static: StaticEmbedder, verifier: PairVerifier | None,
                  query: str) -> Envelope:
    ctx = CacheContext(stage="cache", store=MemoryCacheStore(), embedder=static, mirror=SemanticMirror(static.dim),
                       verifier=verifier)
    filled = make_envelope(CACHED)
    filled.answer, filled.model = "30 days", ModelResult(model="m", cost_micros=1000)
    await cache.fill([filled], ctx)
    env = make_envelope(query)
    env.policy = PolicyDecision(semantic_threshold=0.3)
    (env,) = await cache.process([env], ctx)
    return env


async def test_the_stage_serves_what_guard_and_verifier_pass(make_envelope: MakeEnv, static: StaticEmbedder,
                                                             verifier: PairVerifier) -> None:
    env = await _lookup(make_envelope, static, verifier, REWORDED)
    assert env.cache is not None and env.cache.outcome == "hit" and env.cache.kind == "semantic"
    assert env.cache.verifier_score is not None and env.cache.verifier_score >= verifier.threshold


async def test_the_guard_runs_first_and_names_its_reason(make_envelope: MakeEnv, static: StaticEmbedder,
                                                         verifier: PairVerifier) -> None:
    env = await _lookup(make_envelope, static, verifier, "How long do I have to ask for a refund on a monthly plan?")
    assert env.cache is not None and env.cache.outcome == "miss" and env.cache.rejected_near_miss
    assert env.cache.refused_reason == "content" and env.cache.verifier_score is None


async def test_a_verifier_refusal_is_reason_verifier(make_envelope: MakeEnv, static: StaticEmbedder,
                                                     verifier: PairVerifier) -> None:
    strict = PairVerifier(static, VerifierWeights(**{**verifier.weights.__dict__, "threshold": 0.9999}))
    env = await _lookup(make_envelope, static, strict, REWORDED)
    assert env.cache is not None and env.cache.outcome == "miss"
    assert env.cache.refused_reason == "verifier" and env.cache.verifier_score is not None
    assert (await _lookup(make_envelope, static, None, REWORDED)).cache.outcome == "hit"  # type: ignore[union-attr]


def test_the_guard_reads_synonyms_from_the_static_word_vectors(verifier: PairVerifier) -> None:
    query, candidate = "Where is the biggest folder on my disk?", "Where is the biggest directory on my disk?"
    assert near_miss(query, candidate) == "content"
    assert near_miss(query, candidate, verifier.word_cosines) is None  # folder / directory: one word, two ways
    assert near_miss("How many sick days do I get per year?", "How many vacation days do I get per year?",
                     verifier.word_cosines) == "content"
    assert verifier.word_cosines([], ["x"]).shape == (0, 1)
