"""The verified cascade on the outsider's routing set (issue 20, step 4): its own saving and quality.

The calibrated router is fitted on ``split=tune`` (as ``bench/model_bench.py`` does: folds by task, target 97 %).
For each request the router sends to tier t > small with P(needs t) below ``uncertain_below``
(:func:`workers.routing.cascade.plan`), the cascade serves t−1 first and escalates to t when verification fails.
There is no real model here, so verification is a stated model: an answer from a tier below the label is caught
with probability ``detect`` (the evaluators: refusal, structured output, grounding, self-consistency), an adequate
answer is failed anyway with probability ``false_alarm``; an escalation always fits the budget. Figures are
expectations over those two probabilities (no sampling): saving against serving every request on the large tier
(both calls paid when it escalates), quality (final answer from a tier ≥ the label), under-routing.

``uncertain_below`` is chosen on the tune split's out-of-fold probabilities: the value with the largest saving
whose quality is at most ``--max-quality-loss`` (1 point) below the router's own without a cascade, at the assumed
``detect``; the test split is only measured.

    python -m bench.routing_cascade [--detect 0.8] [--false-alarm 0.05] [--json]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from workers.routing import calibrate as cal
from workers.routing.cascade import plan
from workers.routing.catalog import QUALITY_TIERS, load_catalog

Array = npt.NDArray[np.float64]
OUTSIDER = Path(__file__).resolve().parent / "data" / "outsider_routing.jsonl"
RELATIVE_COST = (0.04, 0.16, 1.0)
UNCERTAIN_GRID = tuple(round(float(x), 2) for x in np.arange(0.0, 0.96, 0.05))


def expected(routed: Array, p_medium: Array, p_large: Array, ranks: Array, costs: Array, *, uncertain_below: float,
             detect: float, false_alarm: float, verify_served: bool = False) -> dict[str, float]:
    """Expected saving / quality / under-routing / share cascaded / share escalated with the cascade on top: the
    first tier f answers; a false alarm (f adequate) or a caught inadequate answer escalates once, to the plan's
    next tier."""
    spent = quality = cascaded = escalated = 0.0
    for i, t in enumerate(routed.astype(int)):
        y = int(ranks[i])
        tier = ("small", "medium", "large")[t]
        step = plan(tier, float(p_medium[i]), float(p_large[i]), RELATIVE_COST, uncertain_below=uncertain_below,
                    verify_served=verify_served)
        if step is None:
            spent += costs[i, t]
            quality += float(t >= y)
            continue
        cascaded += 1
        first, then = QUALITY_TIERS.index(step.first_tier), QUALITY_TIERS.index(step.then_tier)
        p_escalate = false_alarm if first >= y else detect
        spent += costs[i, first] + p_escalate * costs[i, then]
        escalated += p_escalate
        quality += 1.0 if first >= y else p_escalate * float(then >= y)
    n = len(ranks)
    return {"saving": round(1 - float(spent) / float(costs[:, 2].sum()), 4), "quality": round(quality / n, 4),
            "under_routed": round(1 - quality / n, 4), "cascaded": round(cascaded / n, 4),
            "escalated": round(escalated / n, 4)}


def run(detect: float, false_alarm: float, max_quality_loss: float = 0.01, *, verify_served: bool = False,
        max_under: float | None = None, target_quality: float = 0.97) -> dict[str, Any]:
    catalog = load_catalog()
    tune = cal.read_labels(OUTSIDER, catalog, split="tune", group_by="task")
    test = cal.read_labels(OUTSIDER, catalog, split="test", group_by="task")
    _params, reports = cal.calibrate(tune, catalog, target_quality=target_quality)
    chosen = reports[0].chosen
    medium_at, large_at = chosen["medium_at"], chosen["large_at"]
    x_tune, r_tune, c_tune = cal.feature_matrix(tune), np.array([r.tier_rank for r in tune]), cal.tier_costs(tune,
                                                                                                            catalog)
    pm_oof, pl_oof = cal.out_of_fold(x_tune, r_tune, [r.group for r in tune], 1.0, 8)
    routed_oof = cal.route_ranks(pm_oof, pl_oof, medium_at, large_at)
    sweep = {u: expected(routed_oof, pm_oof, pl_oof, r_tune, c_tune, uncertain_below=u, detect=detect,
                         false_alarm=false_alarm, verify_served=verify_served) for u in UNCERTAIN_GRID}
    floor = sweep[0.0]["quality"] - max_quality_loss
    meeting = [u for u, f in sweep.items() if f["quality"] >= floor - 1e-9
               and (max_under is None or f["under_routed"] <= max_under + 1e-9)]
    pick = max(meeting, key=lambda u: sweep[u]["saving"]) if meeting else 0.0
    model = cal.fit(x_tune, r_tune, 1.0)
    x, ranks, costs = cal.feature_matrix(test), np.array([r.tier_rank for r in test]), cal.tier_costs(test, catalog)
    pm, pl = model.probabilities(x)
    routed = cal.route_ranks(pm, pl, medium_at, large_at)
    return {"detect": detect, "false_alarm": false_alarm, "uncertain_below": pick, "verify_served": verify_served,
            "target_quality": target_quality,
            "tune_oof_at_pick": sweep[pick],
            "test_without_cascade": cal.measure(routed, ranks, costs),
            "test_with_cascade": expected(routed, pm, pl, ranks, costs, uncertain_below=pick, detect=detect,
                                          false_alarm=false_alarm, verify_served=verify_served),
            "test_sweep": {u: expected(routed, pm, pl, ranks, costs, uncertain_below=u, detect=detect,
                                       false_alarm=false_alarm, verify_served=verify_served) for u in UNCERTAIN_GRID}}


def _choose(detect: float, args: argparse.Namespace) -> dict[str, Any]:
    """One run per router operating point (``--target-quality``, several: the one whose tune figures save most
    while meeting ``--max-under`` and 95 % quality is kept — chosen on tune, test only reported)."""
    runs = [run(detect, args.false_alarm, args.max_quality_loss, verify_served=args.verify_served,
                max_under=args.max_under, target_quality=q) for q in (args.target_quality or [0.97])]
    ok = [r for r in runs if r["tune_oof_at_pick"]["quality"] >= 0.95
          and (args.max_under is None or r["tune_oof_at_pick"]["under_routed"] <= args.max_under + 1e-9)]
    return max(ok or runs, key=lambda r: r["tune_oof_at_pick"]["saving"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detect", type=float, action="append")
    parser.add_argument("--false-alarm", type=float, default=0.05)
    parser.add_argument("--max-quality-loss", type=float, default=0.01)
    parser.add_argument("--verify-served", action="store_true",
                        help="also verify answers served below large without a cascade, escalating one tier up")
    parser.add_argument("--target-quality", type=float, action="append",
                        help="the calibrated router's operating point(s) to choose from on tune (default 0.97)")
    parser.add_argument("--max-under", type=float, help="choose u on tune with under-routing at most this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [_choose(d, args) for d in (args.detect or [0.7, 0.8, 0.9])]
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    for r in results:
        a, b = r["test_without_cascade"], r["test_with_cascade"]
        print(f"detect {r['detect']:.2f}, false alarm {r['false_alarm']:.2f}: router target {r['target_quality']}, "
              f"uncertain_below {r['uncertain_below']}"
              f" (tune folds: saving {100 * r['tune_oof_at_pick']['saving']:.1f} %, quality "
              f"{100 * r['tune_oof_at_pick']['quality']:.1f} %)")
        print(f"   test without cascade: saving {100 * a['saving']:.1f} %  quality {100 * a['quality']:.1f} %")
        mode = " + verified" if r["verify_served"] else ""
        print(f"   test with cascade{mode}: saving {100 * b['saving']:.1f} %  quality {100 * b['quality']:.1f} %  "
              f"under {100 * b['under_routed']:.1f} %  "
              f"cascaded {100 * b['cascaded']:.1f} %  escalated {100 * b['escalated']:.1f} %")


if __name__ == "__main__":
    main()
