"""Text → dense, L2-normalised float32 vectors, behind one :class:`Embedder` protocol.

``HashingEmbedder`` (the default) needs no network and no model: it extracts word, word-bigram and character
trigram features from normalised text, hashes each feature with a stable hash (never Python's salted ``hash``) into
one of ``2**14`` buckets, and sums a fixed pseudo-random ±1 vector per bucket (a Johnson–Lindenstrauss projection of
the sparse feature vector). The ±1 table comes from SHAKE-256 of a fixed seed, so every process on every machine
builds the same vectors for the same text. It captures lexical similarity (shared words, reordered words, small
spelling changes), not meaning: that is why the semantic cache pairs it with the near-miss guard.

``OpenAICompatibleEmbedder`` calls any ``/v1/embeddings`` endpoint (OpenAI, vLLM, Ollama, TEI) with httpx.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import httpx
import numpy as np
import numpy.typing as npt

from schemas.errors import BackendError, RateLimitedByBackend

Vectors = npt.NDArray[np.float32]

_BUCKETS = 1 << 14
_SEED = b"tollway-hashing-embedder-v1"

_CONTRACTIONS = {
    "n't": " not", "'re": " are", "'s": " is", "'m": " am", "'ll": " will", "'ve": " have", "'d": " would",
}
_CONTRACTION_RE = re.compile(r"(n't|'re|'s|'m|'ll|'ve|'d)\b")
_IRREGULAR = {"ca not": "can not", "wo not": "will not", "sha not": "shall not", "cannot": "can not"}
# "\b(ca not|wo not|sha not|cannot)\b", written so that each match starts with a literal: a pattern that opens with
# \b is tried at every position of the text (2x the CPU on a 300-character answer). After the first letter,
# (?<!\w.) is the \b before it (that letter is a word character).
_IRREGULAR_RE = re.compile(r"(c(?<!\w.)(?:a not|annot)|w(?<!\w.)o not|s(?<!\w.)ha not)\b")
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*|[%$€£]")
# Words that carry little meaning get a small weight so "how do I" vs "how can I" barely moves the vector.
_STOPWORD_TEXT = (
    "a an the is are am was were be been being do does did can could would should will shall may might must "
    "i me my we our you your it its this that these those to of in on at for from by with as and or if then so "
    "what how which who whom whose when where why please tell explain kindly just there here about any some "
    "have has had get got"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


class Embedder(Protocol):
    """Turns texts into an ``(n, dim)`` float32 matrix whose rows have unit L2 norm (zero rows for empty text)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: list[str]) -> Vectors: ...


class TextVectors:
    """A bounded memo of one deterministic embedder's vectors by text, shared by every instance in the process.

    A request's prompt is embedded by retrieval, by the cache stage's lookup and again by post-process's cache fill;
    in one process (``tollway worker all`` or a co-located chain) the second and third are this lookup. Only for
    embedders whose vector is a pure function of the text (the hashing and the static embedders), so a hit returns
    exactly what embedding again would. Oldest first out once full.
    """

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self.rows: dict[str, Vectors] = {}

    def embed(self, texts: list[str], dim: int, compute: Callable[[list[str]], Vectors]) -> Vectors:
        rows = self.rows
        out = np.empty((len(texts), dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}  # each text computed once, at every position it stands
        for i, text in enumerate(texts):
            row = rows.get(text)
            if row is None:
                missing.setdefault(text, []).append(i)
            else:
                out[i] = row  # copied out before this batch's inserts can evict it
        if missing:
            for (text, positions), computed in zip(missing.items(), compute(list(missing)), strict=True):
                out[positions] = computed
                row = computed.copy()
                row.flags.writeable = False
                if len(rows) >= self.max_entries:
                    del rows[next(iter(rows))]
                rows[text] = row
        return out


_MEMOS: dict[str, TextVectors] = {}


def text_vectors(name: str) -> TextVectors:
    """The process's memo for the embedder called ``name`` (its name says its model, weights and dimension)."""
    memo = _MEMOS.get(name)
    if memo is None:
        memo = _MEMOS[name] = TextVectors()
    return memo


def normalise_text(text: str) -> str:
    """NFKC, case-folded, curly quotes straightened, English contractions expanded, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'").replace("‘", "'")
    # Each substitution only where one of its matches could be (every contraction has an apostrophe; "ca not" and
    # "sha not" have "a not", "wo not" "o not"): a scan that finds nothing costs more than the rest of the function.
    if "'" in text:
        text = _CONTRACTION_RE.sub(lambda m: _CONTRACTIONS[m.group(1)], text)
    if "a not" in text or "o not" in text or "cannot" in text:
        text = _IRREGULAR_RE.sub(lambda m: _IRREGULAR[m.group(1)], text)  # can't → ca not → can not
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """Word tokens of already-normalised text: words, numbers (``1,000`` and ``2.5`` stay whole) and symbols."""
    return _TOKEN_RE.findall(text)


@lru_cache(maxsize=1 << 14)
def stem(word: str) -> str:
    """A deliberately tiny suffix stripper: plurals and -ing/-ed, enough for "refunds" ≈ "refund".

    Memoised: words repeat across prompts far more than prompts do (the embedder, the near-miss guard and the
    evaluators all stem every word they read)."""
    if len(word) <= 3 or not word.isalpha() or word in STOPWORDS:
        return word
    for suffix, replacement in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith("ss"):
                return word
            return word[: len(word) - len(suffix)] + replacement
    return word


@lru_cache(maxsize=1 << 14)
def _word_features(word: str) -> tuple[tuple[str, float], ...]:
    """A stemmed word's own features in the order they are added: the word, then (content words) its trigrams.

    Memoised like :func:`stem` and :func:`_bucket`; the vector is exactly the one the uncached loop gives (same
    features, same order of accumulation)."""
    weight = 0.1 if word in STOPWORDS else 1.0
    feats = [("w:" + word, weight)]
    if len(word) > 3 and word not in STOPWORDS:
        padded = f"<{word}>"
        feats.extend(("c:" + padded[i:i + 3], 0.15 * weight) for i in range(len(padded) - 2))
    return tuple(feats)


@lru_cache(maxsize=1 << 15)
def _bucket(key: str) -> int:
    return zlib.crc32(key.encode()) % _BUCKETS


def _features(text: str) -> dict[str, float]:
    words = [stem(w) for w in tokens(normalise_text(text))]
    feats: dict[str, float] = {}
    for word in words:
        for key, weight in _word_features(word):
            feats[key] = feats.get(key, 0.0) + weight
    content = [w for w in words if w not in STOPWORDS]
    for left, right in itertools.pairwise(content):
        key = f"b:{left} {right}"
        feats[key] = feats.get(key, 0.0) + 0.5
    # Sub-linear term frequency: a word said five times is not five times as important.
    return {k: math.sqrt(v) for k, v in feats.items()}


@lru_cache(maxsize=4)
def _projection(dim: int) -> Vectors:
    bits = np.frombuffer(hashlib.shake_256(_SEED + dim.to_bytes(4, "big")).digest(_BUCKETS * dim // 8),
                         dtype=np.uint8)
    # In place: the same float32 arithmetic as (signs * 2 - 1) / sqrt(dim) without three 16 MB temporaries, which
    # set a worker's peak RSS at start-up.
    table: Vectors = np.unpackbits(bits).reshape(_BUCKETS, dim).astype(np.float32)
    table *= np.float32(2.0)
    table -= np.float32(1.0)
    table /= np.float32(np.sqrt(dim))
    return table


@lru_cache(maxsize=4096)
def _unnormalised(text: str, dim: int) -> Vectors | None:
    """One text's projected features. Memoised: the cache stage embeds a prompt to look it up and the post-process
    stage embeds it again to fill the cache (in one process for the all-in-one worker), and repeats are common."""
    feats = _features(text)
    if not feats:
        return None
    buckets = np.fromiter(map(_bucket, feats), dtype=np.int64, count=len(feats))
    weights = np.fromiter(feats.values(), dtype=np.float32, count=len(feats))
    vector: Vectors = weights @ _projection(dim)[buckets]
    vector.flags.writeable = False  # shared by every caller of the memo
    return vector


def l2_normalise(matrix: npt.NDArray[np.floating]) -> Vectors:
    """Rows scaled to unit length; all-zero rows stay zero (so they match nothing)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalised: Vectors = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return normalised


@dataclass(frozen=True)
class HashingEmbedder:
    """Deterministic, offline embedder (see the module docstring)."""

    dim: int = 256
    name: str = field(default="hashing-v1")

    def embed_sync(self, texts: list[str]) -> Vectors:
        return text_vectors(f"{self.name}-d{self.dim}").embed(texts, self.dim, self._embed)

    def _embed(self, texts: list[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vector = _unnormalised(text, self.dim)
            if vector is not None:
                out[row] = vector
        return l2_normalise(out)

    async def embed(self, texts: list[str]) -> Vectors:
        # Pure CPU and ~20 µs per short text: cheaper inline than a thread hop.
        return self.embed_sync(texts)


@dataclass
class OpenAICompatibleEmbedder:
    """``POST {base_url}/v1/embeddings``; the vectors are re-normalised here whatever the server returns."""

    client: httpx.AsyncClient
    model: str
    dim: int
    api_key: str | None = None
    max_batch: int = 256

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    async def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.max_batch):
            chunk = texts[start:start + self.max_batch]
            try:
                response = await self.client.post("/v1/embeddings", json={"model": self.model, "input": chunk},
                                                  headers=headers)
            except httpx.HTTPError as exc:
                raise BackendError(f"embeddings endpoint unreachable: {exc}") from exc
            if response.status_code == 429:
                retry = response.headers.get("retry-after")
                raise RateLimitedByBackend("embeddings endpoint rate-limited us",
                                           retry_after_s=float(retry) if retry and retry.isdigit() else None)
            if response.status_code >= 400:
                raise BackendError(f"embeddings endpoint answered {response.status_code}: {response.text[:200]}",
                                   retryable=response.status_code >= 500)
            try:
                data = sorted(response.json()["data"], key=lambda item: item["index"])
                rows.extend(item["embedding"] for item in data)
            except (ValueError, KeyError, TypeError) as exc:
                raise BackendError(f"embeddings endpoint sent an unexpected body: {exc}", retryable=False) from exc
        matrix = np.asarray(rows, dtype=np.float32)
        if matrix.shape != (len(texts), self.dim):
            raise BackendError(f"expected {len(texts)}×{self.dim} embeddings, got {matrix.shape}", retryable=False)
        return l2_normalise(matrix)
