"""The second stage of a semantic hit: a pair verifier over the ≤ 3 nearest candidates the guard let through.

The embedder ranks candidates by one cosine over averaged word vectors, so a near miss that keeps most words
("How long should I boil a *quail* egg for a runny yolk?") scores above a true rewording ("what's the timing for a
soft egg where the middle is still gooey?"). The verifier looks at the two prompts word by word instead:

``cosine``           the embedder's similarity
``align_min/max``    greedy word alignment both ways (each content word's best cosine in the other prompt, averaged
                     with rarity weights): a rewording aligns loosely everywhere, another question leaves words alone
``rare_gap_max/min`` the largest ``rarity × (1 − best match)`` of a word, per side: a rare word with no counterpart
                     ("quail", "Lisbon") is what changes the question
``exact_min/max``    the share of words with an exact counterpart (near misses keep most words verbatim)
``worst_query/candidate`` the weakest alignment of any word, per side
``length_ratio``     content words, shorter over longer

A logistic model over these (numpy, ten weights) gives the probability that the candidate's answer answers the
query. It was fit by ``python -m bench.fit_verifier`` on the tune split of bench/data/outsider_paraphrase.jsonl
(pairs the guard passed, plus pairs of different questions from the same domain); its threshold keeps wrong hits ≤
1 % on tune. The weights belong to one embedder (the file records its identity); another embedder gets no
verifier. The guard still runs first and names its reason; a refusal here is reason ``verifier`` with the score.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from workers.embedding import STOPWORDS, Embedder, normalise_text, tokens

__all__ = ["FEATURES", "PairVerifier", "VerifierWeights", "WordVectors", "content_words", "load_verifier"]

WEIGHTS_FILE: Final = Path(__file__).with_name("verifier_weights.json")
FEATURES: Final = ("cosine", "align_min", "align_max", "rare_gap_max", "rare_gap_min", "exact_min", "exact_max",
                   "worst_query", "worst_candidate", "length_ratio")
_EXACT: Final = 0.98  # a word vector this close to another is the same word (or a spelling of it)
_WORD_CACHE: Final = 1 << 13  # words whose vectors are kept (1 KB each)


class WordVectors(Protocol):
    """What the verifier needs from an embedder: unit word vectors and each word's rarity in [0, 1]."""

    name: str

    def word_vectors(self, words: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...


@dataclass(frozen=True)
class VerifierWeights:
    embedder: str            # the embedder identity the weights were fit with, without its version and hash
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float         # probability at or above which a candidate is served (chosen on tune)

    @classmethod
    def load(cls, path: Path = WEIGHTS_FILE) -> VerifierWeights:
        raw = json.loads(path.read_text())
        if tuple(raw["features"]) != FEATURES:
            raise ValueError(f"{path} was fit for features {raw['features']}, this code computes {FEATURES}")
        return cls(embedder=raw["embedder"], mean=tuple(raw["mean"]), scale=tuple(raw["scale"]),
                   coef=tuple(raw["coef"]), intercept=float(raw["intercept"]), threshold=float(raw["threshold"]))


def content_words(text: str) -> list[str]:
    return [t for t in tokens(normalise_text(text)) if t.isalnum() and t not in STOPWORDS]


class PairVerifier:
    """Scores (query, cached prompt, similarity) with the fitted logistic model; see the module docstring."""

    def __init__(self, words: WordVectors, weights: VerifierWeights) -> None:
        self._words = words
        self.weights = weights
        self.threshold = weights.threshold
        self._mean = np.asarray(weights.mean, dtype=np.float64)
        self._scale = np.asarray(weights.scale, dtype=np.float64)
        self._coef = np.asarray(weights.coef, dtype=np.float64)
        self._cache: OrderedDict[str, tuple[npt.NDArray[np.float32], float]] = OrderedDict()

    def _vectors(self, words: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        missing = list(dict.fromkeys(w for w in words if w not in self._cache))
        if missing:
            vectors, rarity = self._words.word_vectors(missing)
            for word, vector, rare in zip(missing, vectors, rarity, strict=True):
                self._cache[word] = (vector, float(rare))
            while len(self._cache) > _WORD_CACHE:
                self._cache.popitem(last=False)
        rows = [self._cache[w] for w in words]
        return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows], dtype=np.float32)

    def word_cosines(self, left: Sequence[str], right: Sequence[str]) -> npt.NDArray[np.float32]:
        """Cosines of the words' static vectors (rows ``left``, columns ``right``): the near-miss guard's test of
        whether two differing words are one word said two ways (``semantic_guard.near_miss(..., cosines=...)``)."""
        if not left or not right:
            return np.zeros((len(left), len(right)), dtype=np.float32)
        return self._vectors(list(left))[0] @ self._vectors(list(right))[0].T

    def features(self, query: str, candidate: str, similarity: float) -> npt.NDArray[np.float64]:
        left, right = content_words(query), content_words(candidate)
        if not left or not right:
            return np.asarray([similarity, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=np.float64)
        left_vectors, left_rarity = self._vectors(left)
        right_vectors, right_rarity = self._vectors(right)
        scores = left_vectors @ right_vectors.T
        best_left, best_right = scores.max(axis=1), scores.max(axis=0)
        align_left = float((best_left * left_rarity).sum() / max(float(left_rarity.sum()), 1e-9))
        align_right = float((best_right * right_rarity).sum() / max(float(right_rarity.sum()), 1e-9))
        gap_left = float(((1 - best_left) * left_rarity).max())
        gap_right = float(((1 - best_right) * right_rarity).max())
        exact_left, exact_right = float((best_left > _EXACT).mean()), float((best_right > _EXACT).mean())
        return np.asarray([
            similarity, min(align_left, align_right), max(align_left, align_right), max(gap_left, gap_right),
            min(gap_left, gap_right), min(exact_left, exact_right), max(exact_left, exact_right),
            float(best_left.min()), float(best_right.min()), min(len(left), len(right)) / max(len(left), len(right)),
        ], dtype=np.float64)

    def probability(self, features: npt.NDArray[np.float64]) -> float:
        z = float(((features - self._mean) / self._scale) @ self._coef + self.weights.intercept)
        return 1.0 / (1.0 + float(np.exp(-z)))

    def score(self, query: str, candidate: str, similarity: float) -> float:
        """The probability that ``candidate``'s answer answers ``query``."""
        return self.probability(self.features(query, candidate, similarity))


def embedder_family(name: str) -> str:
    """``wordllama-l2_supercat-0.4.0.post1-d256-aa4eb8e1fcef`` → ``wordllama-l2_supercat-d256``."""
    parts = name.split("-")
    return "-".join(parts[:2] + [p for p in parts if p.startswith("d") and p[1:].isdigit()])


def load_verifier(embedder: Embedder, path: Path = WEIGHTS_FILE) -> PairVerifier | None:
    """The verifier fit for ``embedder``'s family, or ``None`` (hashing, OpenAI, another dimension, no weights)."""
    if not hasattr(embedder, "word_vectors") or not path.is_file():
        return None
    weights = VerifierWeights.load(path)
    if embedder_family(embedder.name) != weights.embedder:
        return None
    words: WordVectors = embedder  # type: ignore[assignment]
    return PairVerifier(words, weights)
