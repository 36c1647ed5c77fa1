"""The learning router from a cold start, on a workload whose labels it never sees (issue 20, step 3).

The outsider's routing prompts (``bench/data/outsider_routing.jsonl``) are replayed as a stream: shuffled passes
over the split, ``--requests`` in all. The learner (:mod:`workers.routing.online`) decides each request's tier from
its features and its own state; the only feedback is an outcome per served request, derived from the label the
learner never reads: **failed** when it was served below its labelled tier (``--missed`` of those are reported
resolved anyway, ``--false-failures`` of the others failed anyway: a noisy outcome signal), else **resolved**.

Reported per window: saving against serving every request on the large tier (each tier priced at its cheapest
catalog model for the request's tokens), quality (served at a tier ≥ the label) and under-routing, over the first
500 / 1,000 / 2,000 requests (cumulative, exploration included) and over each last 500; and the greedy learnt
router, frozen at that point, over the whole split (every prompt once, no probes).

    python -m bench.routing_learning [--split test] [--requests 2000] [--seeds 5] [--transfer-to test] [--json]

Tune the learner's settings with ``--split tune``; report ``--split test``.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from workers.routing import calibrate as cal
from workers.routing.catalog import load_catalog
from workers.routing.features import extract_messages
from workers.routing.online import LearnerConfig, Observation, OnlineRouter, design_row, task_kind

OUTSIDER = Path(__file__).resolve().parent / "data" / "outsider_routing.jsonl"
CHECKPOINTS = (500, 1000, 2000)


def _figures(served: list[int], labels: list[int], cost: list[list[float]]) -> dict[str, float]:
    spent = sum(c[s] for s, c in zip(served, cost, strict=True))
    largest = sum(c[2] for c in cost)
    n = len(served)
    under = sum(1 for s, y in zip(served, labels, strict=True) if s < y)
    return {"saving": round(1 - spent / largest, 4), "quality": round(1 - under / n, 4),
            "under_routed": round(under / n, 4),
            "over_routed": round(sum(1 for s, y in zip(served, labels, strict=True) if s > y) / n, 4)}


def simulate(split: str = "test", requests: int = 2000, seed: int = 0, config: LearnerConfig | None = None,
             missed: float = 0.0, false_failures: float = 0.0, transfer_to: str | None = None) -> dict[str, Any]:
    catalog = load_catalog()
    rows = cal.read_labels(OUTSIDER, catalog, split=split)
    features = [extract_messages(r.messages) for r in rows]
    labels = [r.tier_rank for r in rows]
    costs = cal.tier_costs(rows, catalog).tolist()
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < requests:
        cycle = list(range(len(rows)))
        rng.shuffle(cycle)
        order += cycle
    order = order[:requests]
    learner = OnlineRouter(config)
    served: list[int] = []
    probes = 0
    report: dict[str, Any] = {"split": split, "rows": len(rows), "requests": requests, "seed": seed, "windows": {}}
    for i, index in enumerate(order, 1):
        f = features[index]
        decision = learner.decide(f, "sim", f"{seed}-{i}")
        tier = ("small", "medium", "large").index(decision.tier)
        probes += decision.probe
        served.append(tier)
        failed = tier < labels[index]
        if failed and rng.random() < missed:
            failed = False
        elif not failed and rng.random() < false_failures:
            failed = True
        kind = task_kind(f)
        learner.observe(Observation("sim", kind, tuple(design_row(f, kind)), tier, failed, decision.probe))
        if i in CHECKPOINTS or i == requests:
            seen = order[:i]
            last = order[max(0, i - 500):i]
            frozen = OnlineRouter(learner.config, frozen=True)
            frozen._tenants = learner._tenants  # the same state, decided greedily
            greedy = [("small", "medium", "large").index(frozen.decide(features[j], "sim", f"eval-{j}").tier)
                      for j in range(len(rows))]
            report["windows"][i] = {
                "cumulative": _figures(served, [labels[j] for j in seen], [costs[j] for j in seen]),
                "last_500": _figures(served[-len(last):], [labels[j] for j in last], [costs[j] for j in last]),
                "greedy_on_split": _figures(greedy, labels, costs),
                "failure_price": learner.thresholds("sim")[2], "probes": probes}
    report["oracle"] = _figures(labels, labels, costs)
    if transfer_to:  # the learnt state, frozen, serving another split's prompts (each once, no probes)
        other = cal.read_labels(OUTSIDER, catalog, split=transfer_to)
        frozen = OnlineRouter(learner.config, frozen=True)
        frozen._tenants = learner._tenants
        served_other = [("small", "medium", "large").index(frozen.decide(extract_messages(r.messages), "sim",
                                                                         f"transfer-{j}").tier)
                        for j, r in enumerate(other)]
        report["transfer"] = {"split": transfer_to, **_figures(served_other, [r.tier_rank for r in other],
                                                               cal.tier_costs(other, catalog).tolist())}
    return report


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in runs[0]["windows"]:
        out[n] = {}
        for view in ("cumulative", "last_500", "greedy_on_split"):
            out[n][view] = {k: round(float(np.mean([r["windows"][n][view][k] for r in runs])), 4)
                            for k in ("saving", "quality", "under_routed", "over_routed")}
            out[n][view]["worst_quality"] = round(min(r["windows"][n][view]["quality"] for r in runs), 4)
            out[n][view]["worst_saving"] = round(min(r["windows"][n][view]["saving"] for r in runs), 4)
            out[n][view]["worst_under"] = round(max(r["windows"][n][view]["under_routed"] for r in runs), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--missed", type=float, default=0.0, help="share of failures reported resolved")
    parser.add_argument("--false-failures", type=float, default=0.0, help="share of successes reported failed")
    parser.add_argument("--transfer-to", help="after learning on --split, serve this split's prompts frozen")
    parser.add_argument("--set", action="append", default=[], help="learner setting NAME=VALUE (tuning)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = LearnerConfig()
    for item in args.set:
        name, _, value = item.partition("=")
        config = replace(config, **{name: type(getattr(config, name))(value)})
    runs = [simulate(args.split, args.requests, seed, config, args.missed, args.false_failures, args.transfer_to)
            for seed in range(args.seeds)]
    result = {"split": args.split, "seeds": args.seeds, "requests": args.requests, "missed": args.missed,
              "false_failures": args.false_failures, "oracle": runs[0]["oracle"], "mean": summarise(runs)}
    if args.transfer_to:
        result["transfer"] = {k: [r["transfer"][k] for r in runs] for k in ("saving", "quality", "under_routed")}
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode())
        return
    print(f"split {args.split}: {runs[0]['rows']} prompts replayed as {args.requests} requests, {args.seeds} seeds; "
          f"oracle saving {100 * runs[0]['oracle']['saving']:.1f} %")
    for n, views in result["mean"].items():
        for view, f in views.items():
            print(f"  first {n:>5} {view:>16}: saving {100 * f['saving']:5.1f} %  quality {100 * f['quality']:5.1f} %"
                  f" (worst seed {100 * f['worst_saving']:5.1f} / {100 * f['worst_quality']:5.1f} / "
                  f"{100 * f['worst_under']:4.1f} %)  under {100 * f['under_routed']:4.1f} %  "
                  f"over {100 * f['over_routed']:4.1f} %")
    if args.transfer_to:
        t = result["transfer"]
        print(f"  learnt on {args.split}, frozen on {args.transfer_to}: saving "
              f"{' '.join(f'{100 * v:.1f}' for v in t['saving'])} %  quality "
              f"{' '.join(f'{100 * v:.1f}' for v in t['quality'])} %  (per seed)")


if __name__ == "__main__":
    main()
