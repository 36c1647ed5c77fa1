"""The routing frontier picture of docs/ROUTING.md: saving against quality on the outsider set's test split.

Curves: the calibrated router's frontier on the tune split's held-out folds (where its operating point is chosen)
and on the test split (report only), and the verified cascade on top of the calibrated router over
``uncertain_below`` (test, at the stated detection rate). Points: the router before issue 20, the oracle, and the
learning router from a cold start (``bench.routing_learning --json`` output: greedy after 500 / 1,000 / 2,000
requests and its last 500 served requests).

    python -m bench.routing_learning --split test --seeds 5 --json > learn.json
    python -m bench.routing_cascade --detect 0.8 --json > cascade.json
    python -m bench.routing_frontier --learning learn.json --cascade cascade.json --out docs/img/routing-frontier.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson

from bench.model_bench import BEFORE_ON_TEST, OUTSIDER
from streams.cli.router import plot_frontier
from workers.routing import calibrate as cal
from workers.routing.catalog import load_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learning", type=Path, required=True)
    parser.add_argument("--cascade", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/img/routing-frontier.png"))
    args = parser.parse_args()
    catalog = load_catalog()
    tune = cal.read_labels(OUTSIDER, catalog, split="tune", group_by="task")
    test = cal.read_labels(OUTSIDER, catalog, split="test", group_by="task")
    _params, reports = cal.calibrate(tune, catalog, target_quality=0.97)
    chosen = reports[0].chosen
    x, ranks, costs = cal.feature_matrix(test), np.array([r.tier_rank for r in test]), cal.tier_costs(test, catalog)
    model = cal.fit(cal.feature_matrix(tune), np.array([r.tier_rank for r in tune]), 1.0)
    p_medium, p_large = model.probabilities(x)
    at_point = cal.measure(cal.route_ranks(p_medium, p_large, chosen["medium_at"], chosen["large_at"]), ranks, costs)
    learning = orjson.loads(args.learning.read_bytes())["mean"]
    cascade = orjson.loads(args.cascade.read_bytes())[0]
    sweep = sorted(cascade["test_sweep"].values(), key=lambda p: -p["quality"])
    extra = {"before (dc91436)": BEFORE_ON_TEST, "oracle (labels)": cal.measure(ranks, ranks, costs),
             f"cascade u={cascade['uncertain_below']} (chosen on tune)": cascade["test_with_cascade"]}
    for n in ("500", "1000", "2000"):
        extra[f"learning, cold start, greedy after {n}"] = learning[n]["greedy_on_split"]
    extra["learning, requests 1501–2000 as served"] = learning["2000"]["last_500"]
    plot_frontier({"calibrated, tune folds (op. point chosen here)": (reports[0].frontier, chosen),
                   "calibrated, test split (report only)": (cal.frontier(p_medium, p_large, ranks, costs), at_point),
                   f"calibrated + cascade (detect {cascade['detect']}), test, over u": (sweep, None)},
                  args.out, extra=extra, title="outsider routing set, test split: saving vs quality")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
