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
``--semantic`` instead compares the detector without and with its opt-in semantic head (the ``semantic`` extra) in
one process: TPR / FPR per set including ``injection_outsider_test3.jsonl`` (a third outsider set, report only),
TPR per attack family of test2 / test3, the share of prompts embedded and the CPU per prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from workers.detectors.injection import score
from workers.detectors.semantic import SemanticScorer, SentenceEncoder, open_semantic

DATA = Path(__file__).parent / "data"
TUNING_FILE = DATA / "injection_tuning.jsonl"
HELD_OUT_FILE = DATA / "injection_heldout.jsonl"
OUTSIDER_FILE = DATA / "injection_outsider.jsonl"
OUTSIDER_TUNE2_FILE = DATA / "injection_outsider_tune2.jsonl"
OUTSIDER_TEST2_FILE = DATA / "injection_outsider_test2.jsonl"
OUTSIDER_TEST3_FILE = DATA / "injection_outsider_test3.jsonl"  # a third outsider set, report only (may be absent)
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
        if row.get("label") not in ("attack", "benign") or row.get("split") not in ("tune", "test", "test2", "test3"):
            raise ValueError(f"{path}:{number}: label must be attack|benign and split tune|test|test2|test3, got "
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
    parser.add_argument("--semantic", action="store_true",
                        help="only compare the detector without and with its semantic head (the `semantic` extra) on "
                             "the tune and test sets, per family, plus the head's share of prompts and added CPU")
    args = parser.parse_args()
    if args.semantic:
        return semantic_comparison(args.threshold)

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


def _flags(samples: list[Sample], threshold: float, semantic: SemanticScorer | None) -> list[bool]:
    return [score([s.text], semantic=semantic).score >= threshold for s in samples]


def _cpu_ms(texts: list[str], semantic: SemanticScorer | None) -> float:
    """CPU milliseconds per prompt, one prompt per call, median of 3 passes (same process for both readings)."""
    passes = []
    for _ in range(3):
        start = time.process_time()
        for text in texts:
            score([text], semantic=semantic)
        passes.append((time.process_time() - start) / len(texts) * 1e3)
    return sorted(passes)[1]


def semantic_comparison(threshold: float) -> int:
    """Before (rules + n-grams) → after (with the semantic head), same process: TPR / FPR per set, TPR per attack
    family of the outsider test sets, and what the head costs (share of prompts embedded, CPU per prompt)."""
    semantic = open_semantic(True)
    if semantic is None:
        print("the semantic head cannot run here (see the warning above): pip install -e '.[semantic]'")
        return 2
    sets = {"project tuning": TUNING, "outsider tune": OUTSIDER_TUNE, "outsider tune2": OUTSIDER_TUNE2,
            "project held-out": HELD_OUT, "outsider test": OUTSIDER_TEST, "outsider test2": OUTSIDER_TEST2}
    if OUTSIDER_TEST3_FILE.exists():
        sets["outsider test3"] = load_outsider("test3", OUTSIDER_TEST3_FILE)
    print(f"threshold {threshold}; before = rules + n-grams, after = with the semantic head (band "
          f"{semantic.head.band_low:.2f}-{semantic.head.band_high:.2f})")
    for name, samples in sets.items():
        before, after = _flags(samples, threshold, None), _flags(samples, threshold, semantic)
        attacks = [i for i, s in enumerate(samples) if s.is_attack]
        benign = [i for i, s in enumerate(samples) if not s.is_attack]

        def rate(flags: list[bool], rows: list[int]) -> float:
            return sum(flags[i] for i in rows) / max(1, len(rows))

        print(f"{name:18} ({len(attacks)}/{len(benign)}): TPR {rate(before, attacks):.3f} -> {rate(after, attacks):.3f}"
              f"   FPR {rate(before, benign):.3f} -> {rate(after, benign):.3f}")
        if name in ("outsider test2", "outsider test3"):
            for family in sorted({samples[i].category for i in attacks}):
                rows = [i for i in attacks if samples[i].category == family]
                print(f"    {family:32} {sum(before[i] for i in rows):>3}/{len(rows):<3} -> "
                      f"{sum(after[i] for i in rows):>3}/{len(rows)}")
    mixes = {"cost batch (the eval's mix)": _cost_batch(),
             "benign tune rows": [s.text for s in TUNING + OUTSIDER_TUNE + OUTSIDER_TUNE2 if not s.is_attack],
             "bench/samples.jsonl prompts": _sample_prompts()}
    for name, texts in mixes.items():
        counting = _CountingEncoder(semantic.encoder)
        counted = SemanticScorer(semantic.head, counting)
        embedded = 0
        for text in texts:
            before_calls = counting.calls
            score([text], semantic=counted)
            embedded += counting.calls > before_calls
        base, with_head = _cpu_ms(texts, None), _cpu_ms(texts, semantic)
        print(f"{name:30} {len(texts):>4} prompts: embedded {embedded / len(texts):.1%}; CPU per prompt "
              f"{base:.3f} -> {with_head:.3f} ms (+{with_head - base:.3f} ms mean)")
    return 0


class _CountingEncoder:
    """An encoder that counts its calls (which prompts paid for an embedding)."""

    def __init__(self, inner: SentenceEncoder) -> None:
        self._inner = inner
        self.name = inner.name
        self.calls = 0

    def encode(self, text: str) -> npt.NDArray[np.float32]:
        self.calls += 1
        return self._inner.encode(text)


def _cost_batch(batch_size: int = 500) -> list[str]:
    texts = [s.text for s in HELD_OUT + TUNING + OUTSIDER_TUNE]
    return [texts[i % len(texts)] for i in range(batch_size)]


def _sample_prompts() -> list[str]:
    rows = [json.loads(line) for line in (Path(__file__).parent / "samples.jsonl").read_text().splitlines() if line]
    return [m["content"] for row in rows for m in row["messages"] if m["role"] == "user"]


def _sizes(samples: list[Sample]) -> dict[str, int]:
    attacks, benign = _split(samples)
    return {"attacks": len(attacks), "benign": len(benign)}


if __name__ == "__main__":
    sys.exit(main())
