"""True and false positive rates of the injection detector on labelled sets written for tollway.

Two files under ``bench/data/``, each opening with a ``_meta`` line that says which set it is:

- ``injection_tuning.jsonl``: rules, weights and the n-gram model (``bench/train_injection.py``) may be fitted here.
- ``injection_heldout.jsonl``: never used to choose a rule, a weight or a threshold. ``heldout_v2`` rows were written
  and committed before the v2 detector; ``colleague_fresh`` rows are the earlier fresh set.

Figures are reported per set and per source, at the policy's default threshold and over a small sweep, with the
detector's cost per request on a batch of 500. Run: ``.venv/bin/python -m bench.injection_eval [--threshold 0.6]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workers.detectors.injection import score

DATA = Path(__file__).parent / "data"
TUNING_FILE = DATA / "injection_tuning.jsonl"
HELD_OUT_FILE = DATA / "injection_heldout.jsonl"
DEFAULT_THRESHOLD = 0.6  # the policy document's default


@dataclass(frozen=True)
class Sample:
    text: str
    is_attack: bool
    category: str
    source: str


def load(path: Path) -> list[Sample]:
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "_meta" in row:
            continue
        samples.append(Sample(row["text"], row["label"] == "attack", row["category"], row["source"]))
    return samples


TUNING = load(TUNING_FILE)
HELD_OUT = load(HELD_OUT_FILE)
ATTACKS = [s.text for s in TUNING if s.is_attack]
BENIGN = [s.text for s in TUNING if not s.is_attack]
HELD_OUT_ATTACKS = [s.text for s in HELD_OUT if s.is_attack]
HELD_OUT_BENIGN = [s.text for s in HELD_OUT if not s.is_attack]


def rates(threshold: float, attacks: list[str] = ATTACKS,
          benign: list[str] = BENIGN) -> tuple[float, float, list[str], list[str]]:
    missed = [a for a in attacks if score([a]).score < threshold]
    false_alarms = [b for b in benign if score([b]).score >= threshold]
    return 1 - len(missed) / len(attacks), len(false_alarms) / len(benign), missed, false_alarms


def _split(samples: list[Sample]) -> tuple[list[str], list[str]]:
    return [s.text for s in samples if s.is_attack], [s.text for s in samples if not s.is_attack]


def microseconds_per_request(batch_size: int = 500) -> float:
    texts = [s.text for s in HELD_OUT + TUNING]
    batch = [texts[i % len(texts)] for i in range(batch_size)]
    score(batch[:10])  # warm the model and regex caches
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for text in batch:
            score([text])
        best = min(best, time.perf_counter() - start)
    return best / batch_size * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("-v", "--verbose", action="store_true", help="list the tuning set's misses and false alarms")
    parser.add_argument("--show-held-out", action="store_true", help="list the held-out misses too (read, don't tune)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    groups: dict[str, list[Sample]] = {"tuning": TUNING, "held_out": HELD_OUT}
    for source in sorted({s.source for s in HELD_OUT}):
        groups[f"held_out:{source}"] = [s for s in HELD_OUT if s.source == source]
    thresholds = sorted({0.4, 0.5, 0.6, 0.7, 0.8, args.threshold})
    table = {name: {f"{t:.2f}": rates(t, *_split(samples))[:2] for t in thresholds}
             for name, samples in groups.items()}
    cost = microseconds_per_request()
    if args.json:
        print(json.dumps({"sizes": {n: _sizes(s) for n, s in groups.items()}, "rates": table,
                          "us_per_request": round(cost, 1)}, indent=2))
        return 0
    for name, samples in groups.items():
        attacks, benign = _split(samples)
        print(f"{name}: {len(attacks)} attacks / {len(benign)} benign")
    print(f"{'threshold':>9} " + " ".join(f"{n[:22]:>24}" for n in groups))
    for t in thresholds:
        cells = " ".join(f"{'TPR {:.3f} FPR {:.3f}'.format(*table[n][f'{t:.2f}']):>24}" for n in groups)
        print(f"{t:>9.2f} {cells}{'   <- default' if t == DEFAULT_THRESHOLD else ''}")
    print(f"cost: {cost:.1f} µs/request (one request per call, batch of 500)")
    if args.show_held_out:
        attacks, benign = _split(HELD_OUT)
        cats = {s.text: s.category for s in HELD_OUT}
        _, _, missed, false_alarms = rates(args.threshold, attacks, benign)
        for text in missed:
            print(f"held-out missed  {score([text]).score:.2f} [{cats[text]}] {text!r}")
        for text in false_alarms:
            print(f"held-out flagged {score([text]).score:.2f} [{cats[text]}] {score([text]).rules} {text!r}")
    if args.verbose:
        _, _, missed, false_alarms = rates(args.threshold)
        for text in missed:
            print(f"missed  {score([text]).score:.2f} {text!r}")
        for text in false_alarms:
            result = score([text])
            print(f"flagged {result.score:.2f} {result.rules} {text!r}")
    return 0


def _sizes(samples: list[Sample]) -> dict[str, int]:
    attacks, benign = _split(samples)
    return {"attacks": len(attacks), "benign": len(benign)}


if __name__ == "__main__":
    sys.exit(main())
