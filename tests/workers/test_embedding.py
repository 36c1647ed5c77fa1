"""The offline embedder is deterministic, normalised and lexical; the HTTP one speaks /v1/embeddings."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import BackendError, ConfigError, RateLimitedByBackend
from workers import embedding
from workers.cache.store import vector_space
from workers.embedding import HashingEmbedder, OpenAICompatibleEmbedder, normalise_text, stem
from workers.static_embedding import StaticEmbedder


async def test_rows_are_unit_length_and_empty_text_is_zero() -> None:
    vectors = await HashingEmbedder().embed(["How do I reset my password?", "", "refund policy"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 256)
    norms = np.linalg.norm(vectors, axis=1)
    assert norms[0] == pytest.approx(1, abs=1e-5) and norms[1] == 0 and norms[2] == pytest.approx(1, abs=1e-5)


def test_same_vectors_in_another_process() -> None:
    """Python's hash() is salted per process; the embedder must not depend on it."""
    code = ("from workers.embedding import HashingEmbedder;"
            "print(HashingEmbedder().embed_sync(['refund after 30 days'])[0][:8].round(6).tolist())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    here = HashingEmbedder().embed_sync(["refund after 30 days"])[0][:8].round(6).tolist()
    assert other == str(here)


def test_paraphrase_is_closer_than_an_unrelated_question() -> None:
    v = HashingEmbedder().embed_sync(["How do I reset my password?", "how can i reset my password",
                                      "What is the refund policy for annual plans?"])
    assert v[0] @ v[1] > 0.9
    assert v[0] @ v[2] < 0.3


def test_normalisation() -> None:
    assert normalise_text("I CAN'T  do it, it’s   fine") == "i can not do it, it is fine"
    assert stem("refunds") == "refund" and stem("policies") == "policy" and stem("class") == "class"


def _client(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler, base_url="http://embed.test")


async def test_openai_compatible_embedder_orders_and_normalises() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings" and request.headers["authorization"] == "Bearer k"
        return httpx.Response(200, json={"data": [{"index": 1, "embedding": [0.0, 2.0]},
                                                  {"index": 0, "embedding": [3.0, 4.0]}]})

    async with _client(httpx.MockTransport(handle)) as client:
        vectors = await OpenAICompatibleEmbedder(client, model="m", dim=2, api_key="k").embed(["a", "b"])
    assert vectors.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)], [0.0, 1.0]]


@pytest.mark.parametrize(("status", "error"), [(429, RateLimitedByBackend), (500, BackendError)])
async def test_openai_compatible_embedder_errors(status: int, error: type[Exception]) -> None:
    async with _client(httpx.MockTransport(lambda r: httpx.Response(status, headers={"retry-after": "3"}))) as c:
        with pytest.raises(error):
            await OpenAICompatibleEmbedder(c, model="m", dim=2).embed(["a"])


# Issue 19: the default embedder, WordLlama static embeddings read from the installed wheel, offline.
@pytest.fixture(scope="module")
def static() -> StaticEmbedder:
    return StaticEmbedder()


def test_static_embedder_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    vectors = StaticEmbedder(dim=64).embed_sync(["A man is eating food.", ""])
    assert vectors.shape == (2, 64) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1, abs=1e-5) and not vectors[1].any()  # empty text: zero row


def test_static_embedder_understands_a_rewording_the_lexical_one_misses(static: StaticEmbedder) -> None:
    texts = ["How do I reset my password?", "Steps to change a forgotten login credential",
             "Give me a recipe for chocolate cake."]
    v = static.embed_sync(texts)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
    h = HashingEmbedder().embed_sync(texts)
    assert float(h[0] @ h[1]) < float(v[0] @ v[1])


def test_static_embedder_identity_names_model_version_dim_and_weights(static: StaticEmbedder) -> None:
    assert static.name.startswith("wordllama-l2_supercat-0.4.0.post1-d256-")
    assert StaticEmbedder(dim=128).name != static.name
    assert vector_space(static) == static.name
    assert vector_space(HashingEmbedder()) == "hashing-v1-d256"


async def test_static_embedder_batch_does_not_change_a_row(static: StaticEmbedder) -> None:
    alone = await static.embed(["Is Java faster than Python?"])
    batched = await static.embed(["warm up", "Is Java faster than Python?"])
    np.testing.assert_array_equal(alone[0], batched[1])
    with pytest.raises(TypeError):
        static.embed_sync("not a list")  # type: ignore[arg-type]


def test_missing_wordllama_package_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install"):
        StaticEmbedder()


def test_static_is_the_default_embedder_and_is_local() -> None:
    from streams.settings import Settings
    from workers.policy import DEFAULT_ROUTE, route_for

    assert Settings().embedder == "static"
    assert route_for(None, Settings(embedder="static")) == list(DEFAULT_ROUTE)  # prompts never leave the worker


def test_memoised_vectors_equal_fresh_ones_and_stay_bounded() -> None:
    from workers.embedding import TextVectors

    embedder = HashingEmbedder(dim=64)
    texts = ["how do I rotate the API key", "", "how do I rotate the API key", "another prompt"]
    memo = TextVectors(max_entries=2)
    calls: list[list[str]] = []

    def compute(batch: list[str]) -> np.ndarray:
        calls.append(batch)
        return embedder._embed(batch)

    first = memo.embed(texts, 64, compute)
    assert np.array_equal(first, embedder._embed(texts))
    assert calls == [["how do I rotate the API key", "", "another prompt"]]  # each text once
    assert len(memo.rows) == 2
    again = memo.embed(["another prompt"], 64, compute)
    assert np.array_equal(again[0], first[3]) and len(calls) == 1
    again[0][:] = 0  # the caller's copy: the memo is untouched
    assert np.array_equal(memo.embed(["another prompt"], 64, compute)[0], first[3])


def test_a_memo_hit_survives_the_same_batch_evicting_it() -> None:
    """A full memo, a batch with the oldest entry (a repeated FAQ prompt) and a new text: inserting the new one evicts
    the old one, which must still be served to this batch (a KeyError before)."""
    from workers.embedding import TextVectors

    embedder = HashingEmbedder(dim=64)
    memo = TextVectors(max_entries=2)
    memo.embed(["oldest faq", "second"], 64, embedder._embed)
    out = memo.embed(["oldest faq", "brand new", "oldest faq"], 64, embedder._embed)
    assert np.array_equal(out, embedder._embed(["oldest faq", "brand new", "oldest faq"]))
    assert list(memo.rows) == ["second", "brand new"]


@given(st.lists(st.sampled_from(["'", "’", "n't", "ca", "not", " ", "cannot", "wo", "sha", "CAN'T", "ﬁ", "s", "d",
                                 "re", "ll", "\u212a", "x", "\n"]), max_size=14))
def test_normalise_text_skips_only_substitutions_that_could_not_match(parts: list[str]) -> None:
    text = "".join(parts)
    folded = unicodedata.normalize("NFKC", text).casefold().replace("’", "'").replace("‘", "'")
    folded = embedding._CONTRACTION_RE.sub(lambda m: embedding._CONTRACTIONS[m.group(1)], folded)
    folded = embedding._IRREGULAR_RE.sub(lambda m: embedding._IRREGULAR[m.group(1)], folded)
    assert normalise_text(text) == " ".join(folded.split())
