"""Train the injection detector's semantic head on tuning rows only; write workers/detectors/injection_semantic.json.

The rows are ``bench.train_injection.tuning_rows()`` (the project's tuning set, the outsider ``tune`` split and
``injection_outsider_tune2.jsonl``); the held-out file and every test split are never read. Each row is embedded
with ``workers.detectors.semantic.MiniLMEncoder`` (the ``semantic`` extra), and a logistic regression (classes
balanced, L2, Newton steps; numpy only, deterministic) is fitted on the 384-d vectors.

Everything the detector uses is chosen by 5-fold cross-validation within these rows, folds by group as in
``bench/train_injection.py``. The detector's own reading of each row is taken *out of fold* where it can be (the
n-gram model is refitted per fold; the rules were written on these rows and stay in-sample, so the head's gain
here is a lower bound):

- **the cut**: the largest out-of-fold head logit at which the combined detector (rules/n-gram flag at 0.6, or the
  head at the cut) flags at most ``MAX_COMBINED_FPR`` of the benign rows; the bias is shifted so that the cut reads
  as probability 0.6, the policy's default threshold;
- **the band**: the head runs only when the rule/n-gram reading is below 0.6 and at least ``band_low``: the lowest
  reading of an attack the head added out of fold, less ``BAND_MARGIN``, floored to a multiple of 0.05 (so the
  embedding is paid only where the cheap layers are unsure).

Run: ``.venv/bin/python -m bench.train_injection_semantic`` (about a minute of CPU; the output is byte-identical on
a rerun).
"""

from __future__ import annotations

import json
import math
import sys
import zlib

import numpy as np

from bench.injection_eval import DEFAULT_THRESHOLD
from bench.train_injection import FOLDS, MAX_TUNING_FPR, design, out_of_fold_logits, tuning_rows
from workers.detectors.injection import _WORD, MIN_WORDS, score
from workers.detectors.semantic import ENCODER_NAME, HEAD_PATH, MiniLMEncoder

L2 = 1e-4
NEWTON_STEPS = 25
MAX_COMBINED_FPR = 0.02
BAND_MARGIN = 0.1


def fit_head(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights and bias (last) of an L2 logistic regression, classes balanced, by Newton's method."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    balance = np.where(y == 1, (y == 0).sum() / max(1.0, (y == 1).sum()), 1.0)
    balance /= balance.mean()
    ridge = L2 * n * np.eye(d + 1)
    ridge[-1, -1] = 1e-8  # the bias is not shrunk
    w: np.ndarray = np.zeros(d + 1)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        s = np.maximum(balance * p * (1 - p), 1e-9)
        w = w - np.linalg.solve((xb * s[:, None]).T @ xb + ridge, xb.T @ (balance * (p - y)) + ridge @ w)
    return w


def ngram_out_of_fold(texts: list[str], y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """The n-gram model's calibrated probability of each row from a model that did not see its fold."""
    x = design(texts)
    logits = out_of_fold_logits(x @ x.T, y, fold)
    benign = np.sort(logits[y == 0])[::-1]
    cut = float(benign[int(MAX_TUNING_FPR * len(benign))]) + 1e-6
    shift = math.log(DEFAULT_THRESHOLD / (1 - DEFAULT_THRESHOLD)) - cut
    return np.asarray(1.0 / (1.0 + np.exp(-(logits + shift))))


def main() -> int:
    texts, y, groups = tuning_rows()
    fold = np.array([zlib.crc32(g.encode()) % FOLDS for g in groups])
    encoder = MiniLMEncoder()
    vectors = np.stack([encoder.encode(t) for t in texts]).astype(np.float64)
    long_enough = np.array([len(_WORD.findall(t)) >= MIN_WORDS for t in texts])

    rules = np.array([score([t], use_model=False).score for t in texts])
    ngram = ngram_out_of_fold(texts, y, fold)
    reading = np.where(long_enough, np.maximum(rules, ngram), rules)  # what the detector compares with the band
    flagged = np.where(long_enough & (ngram >= 0.5), np.maximum(rules, ngram), rules) >= DEFAULT_THRESHOLD

    head_logit = np.zeros(len(y))
    for k in range(FOLDS):
        train, held = fold != k, fold == k
        w = fit_head(vectors[train], y[train])
        head_logit[held] = vectors[held] @ w[:-1] + w[-1]
    eligible = long_enough & ~flagged
    benign = y == 0
    cut = math.inf
    for candidate in np.sort(head_logit[benign & eligible])[::-1] + 1e-6:
        if (flagged | (eligible & (head_logit >= candidate)))[benign].mean() > MAX_COMBINED_FPR:
            break
        cut = float(candidate)
    gained = eligible & (head_logit >= cut) & (y == 1)
    band_low = max(0.0, math.floor((float(reading[gained].min()) - BAND_MARGIN) * 20) / 20) if gained.any() else 0.0
    in_band = eligible & (reading >= band_low)
    combined = flagged | (in_band & (head_logit >= cut))
    before_tpr, before_fpr = flagged[y == 1].mean(), flagged[benign].mean()
    after_tpr, after_fpr = combined[y == 1].mean(), combined[benign].mean()
    share = (long_enough & ~flagged & (reading >= band_low))[benign].mean()
    print(f"{len(y)} tuning rows ({int(y.sum())} attacks); {FOLDS}-fold group CV (n-gram out of fold, rules "
          f"in-sample): before TPR {before_tpr:.3f} FPR {before_fpr:.3f} -> with the head TPR {after_tpr:.3f} "
          f"FPR {after_fpr:.3f}; {int(gained.sum())} attacks added; band from {band_low:.2f} "
          f"({share:.0%} of the benign rows embedded)")

    w = fit_head(vectors, y)
    bias = float(w[-1]) - cut + math.log(DEFAULT_THRESHOLD / (1 - DEFAULT_THRESHOLD))
    HEAD_PATH.write_text(json.dumps({
        "about": "logistic regression over all-MiniLM-L6-v2 (int8 ONNX) sentence embeddings for "
                 "workers/detectors/semantic.py; trained by bench/train_injection_semantic.py on the tuning rows of "
                 "bench/train_injection.py only; probability 0.6 at the cross-validated cut (combined benign FPR "
                 f"<= {MAX_COMBINED_FPR}); CV before TPR {before_tpr:.3f} FPR {before_fpr:.3f}, after TPR "
                 f"{after_tpr:.3f} FPR {after_fpr:.3f}, benign rows embedded {share:.3f}",
        "encoder": ENCODER_NAME, "dim": int(vectors.shape[1]), "band_low": band_low, "band_high": DEFAULT_THRESHOLD,
        "bias": round(bias, 5), "weights": [round(float(v), 5) for v in w[:-1]],
    }, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {HEAD_PATH} ({HEAD_PATH.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
