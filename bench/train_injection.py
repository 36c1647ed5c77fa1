"""Train the injection detector's hashed n-gram model on tuning rows only (the project's tuning set, the ``tune``
split of the outsider set and the outsider's second tune file ``injection_outsider_tune2.jsonl``); write
workers/detectors/injection_model.json.

Regularised logistic regression (classes balanced, L2) over the hashed word 1-2-grams and character 3-5-grams of
``workers.detectors.injection.features``, each row scaled to unit length — deterministic, numpy only. With ~800 rows
and 16k features it is solved in its dual form (iteratively reweighted least squares on the row kernel, a few
solves of an 800 x 800 system), and the primal weights shipped are ``Xᵀα``.

The cut is chosen by 5-fold cross-validation *within the tuning rows*, folds by the outsider's ``group`` (a sentence
and its typo / lowercase / formal variants stay in one fold): the out-of-fold logit above which at most
``MAX_TUNING_FPR`` of the benign rows fall. The bias is then shifted so that this logit reads as probability 0.6,
the policy's default threshold; the detector's score is the larger of the rule score and that probability.
The held-out file, the outsider ``test`` split and ``injection_outsider_test2.jsonl`` are never read here.
Run: ``.venv/bin/python -m bench.train_injection``.
"""

from __future__ import annotations

import json
import math
import sys
import zlib

import numpy as np

from bench.injection_eval import DEFAULT_THRESHOLD, OUTSIDER_FILE, OUTSIDER_TUNE2_FILE, TUNING
from workers.detectors.injection import MODEL_PATH, features, normalise

DIMS = 1 << 14
L2 = 1e-3
IRLS_STEPS = 10
FOLDS = 5
MAX_TUNING_FPR = 0.01


def tuning_rows() -> tuple[list[str], np.ndarray, list[str]]:
    """Texts, labels and fold groups of every row the model may learn from."""
    texts = [s.text for s in TUNING]
    labels = [1.0 if s.is_attack else 0.0 for s in TUNING]
    groups = [f"project-{i}" for i in range(len(TUNING))]
    for line in OUTSIDER_FILE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] == "tune":  # the test split is skipped unread
            texts.append(row["text"])
            labels.append(1.0 if row["label"] == "attack" else 0.0)
            groups.append(row["group"])
    for line in OUTSIDER_TUNE2_FILE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] != "tune":
            raise ValueError(f"{OUTSIDER_TUNE2_FILE}: a row of split {row['split']!r} in the tune file")
        texts.append(row["text"])
        labels.append(1.0 if row["label"] == "attack" else 0.0)
        groups.append(f"tune2-{row['group']}")
    return texts, np.array(labels), groups


def design(texts: list[str]) -> np.ndarray:
    matrix = np.zeros((len(texts), DIMS), dtype=np.float64)
    for row, text in enumerate(texts):
        idx = np.unique(features(normalise(text), DIMS))
        if idx.size:
            matrix[row, idx] = 1.0 / np.sqrt(idx.size)
    return matrix


def fit_dual(kernel: np.ndarray, y: np.ndarray) -> np.ndarray:
    """α of kernel logistic regression (the bias as a constant feature, so ``kernel + 1``), classes balanced."""
    n = len(y)
    gram = kernel + 1.0
    balance = np.where(y == 1, (y == 0).sum() / max(1.0, (y == 1).sum()), 1.0)
    balance /= balance.mean()
    f: np.ndarray = np.zeros(n)
    alpha: np.ndarray = np.zeros(n)
    for _ in range(IRLS_STEPS):
        p = 1.0 / (1.0 + np.exp(-f))
        w = np.maximum(balance * p * (1 - p), 1e-6)
        alpha = np.linalg.solve(gram + n * L2 * np.diag(1.0 / w), f + balance * (y - p) / w)
        f = gram @ alpha
    return alpha


def out_of_fold_logits(kernel: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each row's logit from a model fitted without its fold (the trainer's CV, and the semantic head's input)."""
    logits = np.zeros(len(y))
    for k in range(FOLDS):
        train, held = fold != k, fold == k
        alpha = fit_dual(kernel[np.ix_(train, train)], y[train])
        logits[held] = (kernel[np.ix_(held, train)] + 1.0) @ alpha
    return logits


def main() -> int:
    texts, y, groups = tuning_rows()
    x = design(texts)
    kernel = x @ x.T
    fold = np.array([zlib.crc32(g.encode()) % FOLDS for g in groups])
    out_of_fold = out_of_fold_logits(kernel, y, fold)
    benign = np.sort(out_of_fold[y == 0])[::-1]
    cut = float(benign[int(MAX_TUNING_FPR * len(benign))]) + 1e-6
    tpr = float((out_of_fold[y == 1] >= cut).mean())
    fpr = float((out_of_fold[y == 0] >= cut).mean())
    print(f"{len(y)} tuning rows ({int(y.sum())} attacks); {FOLDS}-fold group CV, model alone at the cut: "
          f"TPR {tpr:.3f} FPR {fpr:.3f} (cut logit {cut:.3f})")
    alpha = fit_dual(kernel, y)
    weights = x.T @ alpha
    bias = float(alpha.sum()) - cut + math.log(DEFAULT_THRESHOLD / (1 - DEFAULT_THRESHOLD))
    MODEL_PATH.write_text(json.dumps({
        "about": "hashed n-gram logistic regression for workers/detectors/injection.py; trained by "
                 "bench/train_injection.py on bench/data/injection_tuning.jsonl, the tune split of "
                 "injection_outsider.jsonl and injection_outsider_tune2.jsonl only; probability 0.6 at the cut of "
                 "out-of-fold FPR "
                 f"{MAX_TUNING_FPR} (CV TPR {tpr:.3f} FPR {fpr:.3f})",
        "dims": DIMS, "bias": round(bias, 5), "weights": [round(float(w), 5) for w in weights],
    }, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
