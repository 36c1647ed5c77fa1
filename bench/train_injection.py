"""Train the injection detector's hashed n-gram model on tuning rows only (the project's tuning set and the ``tune``
split of the outsider set); write workers/detectors/injection_model.json.

Logistic regression (full-batch gradient descent from zeros, L2) over the hashed features of
``workers.detectors.injection.features`` — deterministic, numpy only. The weight the model's signal gets in the
detector's
score is chosen by 5-fold cross-validation *within the tuning set*: the largest weight from a small grid whose
out-of-fold combined score (rules + model) keeps the tuning FPR at the default threshold at or below 0.03.
The held-out file and the outsider ``test`` split are never read here.
Run: ``.venv/bin/python -m bench.train_injection``.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench.injection_eval import DEFAULT_THRESHOLD, OUTSIDER_TUNE, TUNING
from workers.detectors.injection import MODEL_PATH, features, normalise, score

DIMS = 1 << 12
L2 = 1e-3
STEPS = 400
LEARNING_RATE = 2.0
SIGNAL_WEIGHTS = (0.0, 0.3, 0.45, 0.6, 0.7)
MAX_TUNING_FPR = 0.03


def design(texts: list[str]) -> np.ndarray:
    matrix = np.zeros((len(texts), DIMS), dtype=np.float64)
    for row, text in enumerate(texts):
        idx = np.unique(features(normalise(text), DIMS))
        if idx.size:
            matrix[row, idx] = 1.0 / np.sqrt(idx.size)
    return matrix


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    weights, bias = np.zeros(x.shape[1]), 0.0
    pos_weight = (y == 0).sum() / max(1, (y == 1).sum())  # balance the classes
    sample_weight = np.where(y == 1, pos_weight, 1.0)
    sample_weight /= sample_weight.mean()
    for _ in range(STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        err = (p - y) * sample_weight
        weights -= LEARNING_RATE * (x.T @ err / len(y) + L2 * weights)
        bias -= LEARNING_RATE * float(err.mean())
    return weights, bias


def combined(rule_score: float, probability: float, signal_weight: float) -> float:
    if probability < 0.5:
        return rule_score
    return 1.0 - (1.0 - rule_score) * (1.0 - signal_weight * (probability - 0.5) * 2)


def main() -> int:
    rows = TUNING + OUTSIDER_TUNE
    texts = [s.text for s in rows]
    y = np.array([1.0 if s.is_attack else 0.0 for s in rows])
    x = design(texts)
    rule_scores = np.array([score([t], use_model=False).score for t in texts])
    out_of_fold = np.zeros(len(texts))
    folds = np.arange(len(texts)) % 5
    for k in range(5):
        train, test = folds != k, folds == k
        weights, bias = fit(x[train], y[train])
        out_of_fold[test] = 1.0 / (1.0 + np.exp(-(x[test] @ weights + bias)))
    chosen = 0.0
    print(f"{'signal weight':>13} {'CV TPR':>7} {'CV FPR':>7}  (tuning set, out-of-fold model, threshold "
          f"{DEFAULT_THRESHOLD})")
    for signal_weight in SIGNAL_WEIGHTS:
        # Rule scores already include the discussion damping; good enough for choosing a weight.
        # The rules were fitted to this set, so their in-sample scores hide what the model adds; judge the
        # model's signal on its own too (out-of-fold), and require both to keep the FPR bound.
        s = np.array([combined(r, p, signal_weight) for r, p in zip(rule_scores, out_of_fold, strict=True)])
        alone = np.array([combined(0.0, p, signal_weight) for p in out_of_fold])
        alone_fpr = float((alone[y == 0] >= DEFAULT_THRESHOLD).mean())
        tpr = float((s[y == 1] >= DEFAULT_THRESHOLD).mean())
        fpr = float((s[y == 0] >= DEFAULT_THRESHOLD).mean())
        alone_tpr = float((alone[y == 1] >= DEFAULT_THRESHOLD).mean())
        print(f"{signal_weight:>13.2f} {tpr:>7.3f} {fpr:>7.3f}   model alone: TPR {alone_tpr:.3f} FPR {alone_fpr:.3f}")
        if fpr <= MAX_TUNING_FPR and alone_fpr <= MAX_TUNING_FPR:
            chosen = signal_weight
    model_only = float(((out_of_fold >= 0.5) == (y == 1)).mean())
    print(f"model alone, out-of-fold accuracy at p>=0.5: {model_only:.3f}; chosen signal weight {chosen}")
    weights, bias = fit(x, y)
    MODEL_PATH.write_text(json.dumps({
        "about": "hashed n-gram logistic regression for workers/detectors/injection.py; "
                 "trained by bench/train_injection.py "
                 "on bench/data/injection_tuning.jsonl and the tune split of injection_outsider.jsonl only",
        "dims": DIMS, "bias": round(bias, 5), "signal_weight": chosen,
        "weights": [round(float(w), 5) for w in weights],
    }, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
