"""True and false positive rates of the injection detector on labelled sets written for tollway.

Three files under ``bench/data/``:

- ``injection_tuning.jsonl``: rules, weights and the n-gram scorer (``bench/train_injection.py``) may be fitted here;
  the scorer also learns from the outsider ``tune`` rows.
- ``injection_heldout.jsonl``: never used to choose a rule, a weight or a threshold. ``heldout_v2`` rows were written
  and committed before the v2 detector; ``colleague_fresh`` rows are the earlier fresh set.
- ``injection_outsider.jsonl``: written by someone who had not read the detector, before it was tuned (a copy of
  ``/work/evalsets/injection.jsonl``; its README describes the families and styles). Rows carry ``split``: rules may
  be fitted to ``tune`` rows only; figures are reported on ``test`` rows, per attack family (TPR) and per benign
  family and style (FPR). Misses can be listed for ``tune`` only.
- ``injection_outsider_tune2.jsonl`` / ``injection_outsider_test2.jsonl``: a second outsider set (README beside
  them), weighted to the families the first one found hard. ``tune2`` rows may be fitted and trained on; ``test2`` is
  reported per family and never listed.

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
OUTSIDER_FILE = DATA / "injection_outsider.jsonl"
OUTSIDER_TUNE2_FILE = DATA / "injection_outsider_tune2.jsonl"
OUTSIDER_TEST2_FILE = DATA / "injection_outsider_test2.jsonl"
DEFAULT_THRESHOLD = 0.6  # the policy document's default


@dataclass(frozen=True)
class Sample:
    text: str
    is_attack: bool
    category: str
    source: str
    style: str = ""


def load(path: Path) -> list[Sample]:
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "_meta" in row:
            continue
        samples.append(Sample(row["text"], row["label"] == "attack", row["category"], row["source"]))
    return samples


def load_outsider(split: str, path: Path = OUTSIDER_FILE) -> list[Sample]:
    """The outsider's rows of one split (``tune`` or ``test``); ``category`` is the row's family."""
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if row.get("label") not in ("attack", "benign") or row.get("split") not in ("tune", "test", "test2"):
            raise ValueError(f"{path}:{number}: label must be attack|benign and split tune|test|test2, got "
                             f"{row!r:.200}")
        if row["split"] == split:
            samples.append(Sample(row["text"], row["label"] == "attack", row["family"], f"outsider_{split}",
                                  row["style"]))
    return samples


TUNING = load(TUNING_FILE)
HELD_OUT = load(HELD_OUT_FILE)
ATTACKS = [s.text for s in TUNING if s.is_attack]
BENIGN = [s.text for s in TUNING if not s.is_attack]
HELD_OUT_ATTACKS = [s.text for s in HELD_OUT if s.is_attack]
HELD_OUT_BENIGN = [s.text for s in HELD_OUT if not s.is_attack]
OUTSIDER_TUNE = load_outsider("tune")
OUTSIDER_TEST = load_outsider("test")
OUTSIDER_TUNE2 = load_outsider("tune", OUTSIDER_TUNE2_FILE)
OUTSIDER_TEST2 = load_outsider("test2", OUTSIDER_TEST2_FILE)


def rates(threshold: float, attacks: list[str] = ATTACKS,
          benign: list[str] = BENIGN) -> tuple[float, float, list[str], list[str]]:
    missed = [a for a in attacks if score([a]).score < threshold]
    false_alarms = [b for b in benign if score([b]).score >= threshold]
    return 1 - len(missed) / len(attacks), len(false_alarms) / len(benign), missed, false_alarms


def _split(samples: list[Sample]) -> tuple[list[str], list[str]]:
    return [s.text for s in samples if s.is_attack], [s.text for s in samples if not s.is_attack]


@dataclass(frozen=True)
class Cell:
    group: str
    flagged: int
    total: int

    @property
    def rate(self) -> float:
        return self.flagged / self.total if self.total else 0.0


def breakdown(samples: list[Sample], threshold: float) -> dict[str, list[Cell]]:
    """TPR per attack family; FPR per benign family and per style (of benign rows, and of attack rows as TPR)."""
    verdict = {s.text: score([s.text]).score >= threshold for s in samples}

    def cells(rows: list[Sample], key: str) -> list[Cell]:
        groups: dict[str, list[Sample]] = {}
        for row in rows:
            groups.setdefault(getattr(row, key), []).append(row)
        return [Cell(name, sum(verdict[r.text] for r in members), len(members))
                for name, members in sorted(groups.items())]

    attacks = [s for s in samples if s.is_attack]
    benign = [s for s in samples if not s.is_attack]
    return {"attack family (TPR)": cells(attacks, "category"), "benign family (FPR)": cells(benign, "category"),
            "benign style (FPR)": cells(benign, "style"), "attack style (TPR)": cells(attacks, "style")}


def print_breakdown(title: str, table: dict[str, list[Cell]]) -> None:
    print(f"\n{title}")
    for heading, cells in table.items():
        print(f"  {heading:<30} {'rate':>6} {'n':>9}")
        for cell in cells:
            print(f"    {cell.group:<28} {cell.rate:>6.3f} {cell.flagged:>4}/{cell.total:<4}")


def microseconds_per_request(batch_size: int = 500) -> float:
    texts = [s.text for s in HELD_OUT + TUNING + OUTSIDER_TUNE]
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
    parser.add_argument("--show-outsider-tune", action="store_true",
                        help="list the outsider tune split's misses and false alarms (the test split is never listed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    groups: dict[str, list[Sample]] = {"tuning": TUNING, "held_out": HELD_OUT}
    for source in sorted({s.source for s in HELD_OUT}):
        groups[f"held_out:{source}"] = [s for s in HELD_OUT if s.source == source]
    groups["outsider:tune"] = OUTSIDER_TUNE
    groups["outsider:test"] = OUTSIDER_TEST
    groups["outsider:tune2"] = OUTSIDER_TUNE2
    groups["outsider:test2"] = OUTSIDER_TEST2
    thresholds = sorted({0.4, 0.5, 0.6, 0.7, 0.8, args.threshold})
    table = {name: {f"{t:.2f}": rates(t, *_split(samples))[:2] for t in thresholds}
             for name, samples in groups.items()}
    cost = microseconds_per_request()
    outsider_test = breakdown(OUTSIDER_TEST, args.threshold)
    outsider_test2 = breakdown(OUTSIDER_TEST2, args.threshold)
    if args.json:
        print(json.dumps({"sizes": {n: _sizes(s) for n, s in groups.items()}, "rates": table,
                          "outsider_test_breakdown": {heading: {c.group: [c.flagged, c.total] for c in cells}
                                                      for heading, cells in outsider_test.items()},
                          "outsider_test2_breakdown": {heading: {c.group: [c.flagged, c.total] for c in cells}
                                                       for heading, cells in outsider_test2.items()},
                          "us_per_request": round(cost, 1)}, indent=2))
        return 0
    for name, samples in groups.items():
        attacks, benign = _split(samples)
        print(f"{name}: {len(attacks)} attacks / {len(benign)} benign")
    print(f"{'threshold':>9} " + " ".join(f"{n[:22]:>24}" for n in groups))  # a wide table: pipe through less -S
    for t in thresholds:
        cells = " ".join(f"{'TPR {:.3f} FPR {:.3f}'.format(*table[n][f'{t:.2f}']):>24}" for n in groups)
        print(f"{t:>9.2f} {cells}{'   <- default' if t == DEFAULT_THRESHOLD else ''}")
    print(f"cost: {cost:.1f} µs/request (one request per call, batch of 500)")
    print_breakdown(f"outsider set, test split, threshold {args.threshold}", outsider_test)
    print_breakdown(f"outsider second set, test2 (report only), threshold {args.threshold}", outsider_test2)
    print("\noutsider set, test split, frontier (a reading, never a way to pick the threshold)")
    attacks, benign = _split(OUTSIDER_TEST)
    attack_scores = [score([a]).score for a in attacks]
    benign_scores = [score([b]).score for b in benign]
    for t in (0.5, 0.55, 0.6, 0.65, 0.7):
        tpr = sum(s >= t for s in attack_scores) / len(attacks)
        fpr = sum(s >= t for s in benign_scores) / len(benign)
        print(f"  threshold {t:.2f}: TPR {tpr:.3f} FPR {fpr:.3f}")
    if args.show_outsider_tune:
        for sample in OUTSIDER_TUNE:
            result = score([sample.text])
            if (result.score >= args.threshold) != sample.is_attack:
                kind = "missed " if sample.is_attack else "flagged"
                print(f"tune {kind} {result.score:.2f} [{sample.category}/{sample.style}] {result.rules} "
                      f"{sample.text!r}")
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
