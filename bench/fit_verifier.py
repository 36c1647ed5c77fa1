"""Fit the cache's pair verifier on the tune split only: ``python -m bench.fit_verifier`` (a few seconds).

Writes ``workers/cache/verifier_weights.json``: a numpy logistic regression over ``workers.cache.verifier.FEATURES``,
fit on the tune split of bench/data/outsider_paraphrase.jsonl (both directions of every pair the near-miss guard
passes; paraphrases are positives, near misses negatives) plus "other questions" of the same domain (pairs of
prompts from different groups, also negatives, so that the model cannot learn "few shared words = paraphrase").
The operating point — the similarity floor and the probability threshold — is the one with the most tune hits at
≤ 1 % wrong hits on tune near misses and on tune other-question pairs. The test split is never read here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.paraphrase_eval import TARGET_WRONG, directions, other_questions, rows
from workers.cache.semantic_guard import near_miss
from workers.cache.verifier import FEATURES, WEIGHTS_FILE, PairVerifier, VerifierWeights, embedder_family
from workers.static_embedding import StaticEmbedder

FLOORS = [round(0.30 + 0.05 * i, 2) for i in range(12)]  # 0.30 … 0.85
L2 = 5.0


def fit_logistic(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float = L2,
                 iterations: int = 4000, rate: float = 0.5) -> tuple[Any, Any, Any, float]:
    """Standardised features, gradient descent on the mean log loss with an L2 penalty (no library needed)."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    coef, intercept = np.zeros(z.shape[1]), 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ coef + intercept)))
        coef -= rate * (z.T @ (p - y) / len(y) + l2 * coef / len(y))
        intercept -= rate * float((p - y).mean())
    return mean, scale, coef, intercept


def pair_table(embedder: StaticEmbedder, verifier: PairVerifier, pairs: list[tuple[str, str, int]]
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Features, labels and the guard's verdict (True = passed) of (query, cached, label) pairs."""
    features, labels, passed = [], [], []
    for query, cached, label in pairs:
        left, right = embedder.embed_sync([query, cached])
        features.append(verifier.features(query, cached, float(left @ right)))
        labels.append(label)
        passed.append(near_miss(query, cached, verifier.word_cosines) is None)
    return np.asarray(features), np.asarray(labels, dtype=np.float64), np.asarray(passed)


def operating_point(prob: npt.NDArray[np.float64], similarity: npt.NDArray[np.float64],
                    passed: npt.NDArray[np.bool_], labels: npt.NDArray[np.float64],
                    other: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]
                    ) -> dict[str, float]:
    best = {"hit_rate": -1.0}
    for floor in FLOORS:
        for threshold in np.linspace(0.30, 0.99, 70):
            served = passed & (similarity >= floor) & (prob >= threshold)
            other_served = other[2] & (other[1] >= floor) & (other[0] >= threshold)
            hit, wrong = served[labels == 1].mean(), served[labels == 0].mean()
            if wrong <= TARGET_WRONG and other_served.mean() <= TARGET_WRONG and hit > best["hit_rate"]:
                best = {"similarity_floor": floor, "threshold": round(float(threshold), 3), "hit_rate": float(hit),
                        "wrong_rate": float(wrong), "other_question_wrong_rate": float(other_served.mean())}
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args()
    embedder = StaticEmbedder()
    blank = VerifierWeights(embedder="", mean=(0.0,) * len(FEATURES), scale=(1.0,) * len(FEATURES),
                            coef=(0.0,) * len(FEATURES), intercept=0.0, threshold=0.5)
    verifier = PairVerifier(embedder, blank)
    tune = [r for r in rows("outsider_paraphrase.jsonl") if r["split"] == "tune"]
    x, y, passed = pair_table(embedder, verifier, directions(tune))
    ox, oy, opassed = pair_table(embedder, verifier, other_questions(tune))
    train_x = np.vstack([x[passed], ox[opassed]])
    train_y = np.concatenate([y[passed], oy[opassed]])
    mean, scale, coef, intercept = fit_logistic(train_x, train_y)
    fitted = PairVerifier(embedder, VerifierWeights(embedder="", mean=tuple(mean), scale=tuple(scale),
                                                    coef=tuple(coef), intercept=intercept, threshold=0.5))
    prob = np.asarray([fitted.probability(f) for f in x])
    other_prob = np.asarray([fitted.probability(f) for f in ox])
    point = operating_point(prob, x[:, 0], passed, y, (other_prob, ox[:, 0], opassed))
    out = {
        "embedder": embedder_family(embedder.name), "features": list(FEATURES),
        "mean": [round(float(v), 6) for v in mean], "scale": [round(float(v), 6) for v in scale],
        "coef": [round(float(v), 6) for v in coef], "intercept": round(float(intercept), 6),
        "threshold": point["threshold"], "similarity_floor": point["similarity_floor"],
        "fit": {"split": "tune", "pairs": len(tune), "directions": len(y), "other_question_pairs": len(oy),
                "trained_on": len(train_y), "l2": L2, "operating_point_on_tune": point},
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["fit"], indent=1))
    print("weights:", dict(zip(FEATURES, out["coef"], strict=True)))


if __name__ == "__main__":
    main()
