"""Model-stage figures: router decisions/s, stage throughput with and without micro-batching, auto-tier accuracy.

    python -m bench.model_bench [--requests 512] [--batch 64] [--latency-scale 0.1] [--json]

1. router     decisions per second of :func:`workers.routing.router.route` over the labelled prompts (one core,
in process);
2. stage      requests/s through :func:`workers.model.process` with the ``local`` backend sleeping the default
              catalog's latency profile × ``--latency-scale``, fed in stream-sized batches of ``--batch``; once
              with micro-batching (one call per model and up to max_batch requests) and once without (one call
              per request); the ratio is the figure;
4. outsider   the outsider's labelled routing set (``bench/data/outsider_routing.jsonl``): calibrated on
              split=tune, measured on split=test only, against the router before calibration
              (``--routing-only --plot docs/img/routing-frontier.png`` for just these figures and the frontier);
3. auto tier  accuracy of :mod:`workers.routing.difficulty` on ``bench/data/difficulty.jsonl`` (written by hand for this
              project; the thresholds were tuned on it, so read it as a training-set figure), with under-routing
              (quality lost) and over-routing (money lost) counted apart, and the expected cost of auto routing
              against sending everything to the large tier.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from schemas.envelope import Envelope
from streams.clients.envelopes import new_envelope
from workers.backends.local import LocalBackend
from workers.model import ModelContext, process
from workers.routing.catalog import QUALITY_TIERS, load_catalog
from workers.routing.difficulty import estimate
from workers.routing.router import route

DATA = Path(__file__).resolve().parent / "data" / "difficulty.jsonl"


def labelled() -> list[dict[str, str]]:
    return [orjson.loads(line) for line in DATA.read_bytes().splitlines() if line.strip()]


def envelopes(n: int, budget_ms: int = 60_000) -> list[Envelope]:
    prompts = [row["prompt"] for row in labelled()]
    return [new_envelope(prompts[i % len(prompts)], tenant="bench", budget_ms=budget_ms) for i in range(n)]


def bench_router(n: int) -> dict[str, Any]:
    catalog = load_catalog()
    envs = envelopes(n)
    started, cpu_started = time.perf_counter(), time.process_time()
    for env in envs:
        route(env, catalog, env.created_at_ns)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    # Wall time on a shared machine includes other processes' turns; CPU time is this process's own cost.
    return {"decisions": n, "seconds": round(seconds, 4), "decisions_per_s": round(n / seconds),
            "cpu_seconds": round(cpu_seconds, 4), "decisions_per_cpu_s": round(n / cpu_seconds)}


async def bench_stage(n: int, batch: int, latency_scale: float, micro_batching: bool) -> dict[str, Any]:
    backend = LocalBackend(latency_scale=latency_scale)
    ctx = ModelContext(stage="model", catalog=load_catalog(), backends={"local": backend},
                       micro_batching=micro_batching)
    envs = envelopes(n)
    started = time.perf_counter()
    for i in range(0, n, batch):
        await process(envs[i:i + batch], ctx)
    seconds = time.perf_counter() - started
    ok = sum(1 for e in envs if e.outcome is None and e.answer)
    return {"requests": n, "ok": ok, "backend_calls": backend.calls, "seconds": round(seconds, 3),
            "requests_per_s": round(n / seconds, 1)}


def bench_auto_tier() -> dict[str, Any]:
    catalog = load_catalog()
    rows = labelled()
    correct = under = over = 0
    confusion: dict[str, dict[str, int]] = {t: dict.fromkeys(QUALITY_TIERS, 0) for t in QUALITY_TIERS}
    auto_cost = large_cost = labelled_cost = 0
    cheapest = {t: min((m for m in catalog.models if m.quality_tier == t),
                       key=lambda m: m.prices.output_micros_per_mtok) for t in QUALITY_TIERS}
    for row in rows:
        predicted, truth = estimate(row["prompt"]).tier, row["tier"]
        confusion[truth][predicted] += 1
        delta = QUALITY_TIERS.index(predicted) - QUALITY_TIERS.index(truth)
        correct += delta == 0
        under += delta < 0
        over += delta > 0
        env = new_envelope(row["prompt"], tenant="bench", budget_ms=60_000)
        decision = route(env, catalog, env.created_at_ns)

        def cost(tier: str, decision: Any = decision) -> int:
            return int(decision.expected_cost_micros(cheapest[tier]))

        auto_cost += cost(predicted)
        large_cost += cost("large")
        labelled_cost += cost(truth)
    n = len(rows)
    return {"labelled": n, "accuracy": round(correct / n, 3), "under_routed": under, "over_routed": over,
            "confusion_truth_to_predicted": confusion,
            "expected_cost_micros": {"auto": auto_cost, "all_large": large_cost, "labelled_tiers": labelled_cost},
            "saving_vs_all_large": round(1 - auto_cost / large_cost, 3)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"router": bench_router(args.decisions)}
    batched = await bench_stage(args.requests, args.batch, args.latency_scale, True)
    single = await bench_stage(args.requests, args.batch, args.latency_scale, False)
    results["stage"] = {"latency_scale": args.latency_scale, "stream_batch": args.batch,
                        "micro_batched": batched, "one_call_per_request": single,
                        "ratio": round(batched["requests_per_s"] / single["requests_per_s"], 2)}
    results["auto_tier"] = bench_auto_tier()
    results["outsider_routing"] = bench_outsider_routing(args.plot)
    results["rows"] = rows(results)
    return results


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures for bench/run.py's table, each next to its baseline from the same run."""
    stage, tier = results["stage"], results["auto_tier"]
    costs = tier["expected_cost_micros"]
    return [
        {"figure": "model stage throughput, micro-batched backend calls",
         "value": stage["micro_batched"]["requests_per_s"], "unit": "req/s",
         "baseline": stage["one_call_per_request"]["requests_per_s"], "baseline_name": "one backend call per request",
         "note": f"local model at latency scale {stage['latency_scale']}, stream batches of {stage['stream_batch']}"},
        {"figure": "router decisions per CPU second", "value": results["router"]["decisions_per_cpu_s"],
         "unit": "/CPU-s"},
        {"figure": "auto-tier accuracy on the labelled prompt set", "value": round(100 * tier["accuracy"], 1),
         "unit": "%", "note": f"{tier['labelled']} prompts; under-routed {tier['under_routed']}, "
                              f"over-routed {tier['over_routed']}"},
        {"figure": "auto-tier expected cost", "value": costs["auto"], "unit": "µ$", "baseline": costs["all_large"],
         "baseline_name": "every prompt on the large tier"},
    ]


OUTSIDER = Path(__file__).resolve().parent / "data" / "outsider_routing.jsonl"
# The router at dc91436 (before issue 20) on the same test split, measured with this harness at that commit.
BEFORE_ON_TEST = {"saving": 0.573, "quality": 0.875, "under_routed": 0.125}


def bench_outsider_routing(plot: Path | None = None) -> dict[str, Any]:
    """The outsider's routing set: fit on split=tune (folds by task, target 97 %), measure on split=test only.

    Figures per system on the test split: saving against every request on the large tier (each tier priced at its
    cheapest model for the request's tokens), quality (share routed to a tier ≥ its label), under/over-routing."""
    import numpy as np

    from workers.routing import calibrate as cal
    from workers.routing.difficulty import estimate as heuristic

    catalog = load_catalog()
    tune = cal.read_labels(OUTSIDER, catalog, split="tune", group_by="task")
    test = cal.read_labels(OUTSIDER, catalog, split="test", group_by="task")
    params, reports = cal.calibrate(tune, catalog, target_quality=0.97)
    chosen = reports[0].chosen
    x, ranks, costs = cal.feature_matrix(test), np.array([r.tier_rank for r in test]), cal.tier_costs(test, catalog)
    model = cal.fit(cal.feature_matrix(tune), np.array([r.tier_rank for r in tune]), 1.0)
    p_medium, p_large = model.probabilities(x)
    calibrated = cal.measure(cal.route_ranks(p_medium, p_large, chosen["medium_at"], chosen["large_at"]), ranks, costs)
    heuristic_ranks = np.array([QUALITY_TIERS.index(heuristic(r.messages[-1][1]).tier) for r in test])
    results = {"test_rows": len(test), "tune_rows": len(tune), "params_version": params.version,
               "operating_point": {k: chosen[k] for k in ("medium_at", "large_at")},
               "before": BEFORE_ON_TEST, "heuristic_fixed": cal.measure(heuristic_ranks, ranks, costs),
               "calibrated": calibrated, "oracle": cal.measure(ranks, ranks, costs)}
    if plot is not None:
        from streams.cli.router import plot_frontier

        test_frontier = cal.frontier(p_medium, p_large, ranks, costs)
        plot_frontier({"calibrated, tune folds (op. point chosen here)": (reports[0].frontier, chosen),
                       "calibrated, test split (report only)": (test_frontier, calibrated)}, plot,
                      extra={"before (dc91436) on test": BEFORE_ON_TEST,
                             "heuristic, fixed, on test": results["heuristic_fixed"],
                             "oracle (labels) on test": results["oracle"]},
                      title="outsider routing set: saving vs quality")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--latency-scale", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="print one JSON object (for bench/run.py)")
    parser.add_argument("--plot", type=Path, default=None, help="draw the outsider routing frontier to this PNG")
    parser.add_argument("--routing-only", action="store_true", help="only the outsider routing figures")
    if parser.parse_args().routing_only:
        print(orjson.dumps(bench_outsider_routing(parser.parse_args().plot), option=orjson.OPT_INDENT_2).decode())
        raise SystemExit(0)
    results = asyncio.run(main(parser.parse_args()))
    if parser.parse_args().json:
        print(orjson.dumps(results).decode())
    else:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())

