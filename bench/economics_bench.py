"""Scenario 6, economics: what tollway's routing and caches save against always calling the most capable model.

    .venv/bin/python -m bench.economics_bench [--requests 4000] [--seed 2026] [--batch 64] [--json]
    .venv/bin/python -m bench.economics_bench --tune        # threshold sweep on the tuning set (seed 1)

A labelled workload (``bench/economics_workload.py``: exact repeats, paraphrases, meaning-flipping near misses and
questions of mixed difficulty over four tenants) goes, in stream-sized batches, through the real stage functions on
their in-memory backends: ``workers.cache.stage.process`` (exact + semantic cache, near-miss guard),
``workers.model.process``
(the router on the default catalog, the ``local`` backend's token counts, the catalog's integer prices) and
``workers.postprocess.process`` with the cache fill hooked as the stage shell hooks it. No Kafka, Redis, retrieval or
policy stage: the figures are about money and answers, and the same in-process run is deterministic. Three systems
see the same requests:

``tollway``        auto tier (the difficulty estimator sees the text, never the label) + exact and semantic cache;
``routing only``   the same without the cache (what the router alone saves);
``all large``      the baseline: every request to max-us (the cheapest large-tier model), no cache.

Per request: cost (the model's ``cost_micros``, 0 for a cache hit); quality kept when a model of at least the
labelled tier answered, or a cache hit served an answer given to the *same meaning* by such a model. To know which
entry a hit served, the harness tags each model answer with its request index before the cache stores it (the tag
is not part of any figure; usage and cost are settled before it is added). A wrong hit is a hit whose entry answered
another meaning (a near miss, or a new question, served a neighbour's answer).

Targets (issue 10): >= 60 % cheaper than the baseline at >= 95 % quality, wrong hits <= 1 % of hits. The figures
depend on the workload's assumptions (``DEFAULT_MIX``, ``DEFAULT_TIER_MIX`` and the families in
``bench/economics_workload.py``), which is why the routing-only saving is reported beside the full one. ``--tune``
sweeps the difficulty estimator's two thresholds on the tuning set (seed 1, never the measured seed 2026) and
prints saving and quality per pair; the defaults in ``workers/routing/difficulty.py`` are what the measured run uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.economics_workload import Ask, describe, generate  # noqa: E402
from schemas.envelope import CacheControl, Envelope, Status  # noqa: E402
from streams.clients.envelopes import new_envelope  # noqa: E402
from streams.settings import Settings  # noqa: E402
from workers import model, postprocess  # noqa: E402
from workers.backends.local import LocalBackend  # noqa: E402
from workers.cache import stage as cache  # noqa: E402
from workers.cache.stage import CacheContext  # noqa: E402
from workers.cache.store import MemoryCacheStore, SemanticMirror  # noqa: E402
from workers.context import StageContext  # noqa: E402
from workers.embedding import HashingEmbedder  # noqa: E402
from workers.model import ModelContext  # noqa: E402
from workers.postprocess import PostprocessContext  # noqa: E402
from workers.routing import difficulty  # noqa: E402
from workers.routing.catalog import QUALITY_TIERS, ModelCatalog, load_catalog  # noqa: E402

SYSTEMS = ("tollway", "routing_only", "all_large")
BASELINE_MODEL = "max-us"  # the cheapest model of the most capable tier in the default catalog
MEASURED_SEED, TUNING_SEED = 2026, 1
BUDGET_MS = 60_000  # generous: no request is degraded for time, the figures are about money and answers
_TAG = re.compile(r"^⟦(\d+)⟧ ")


@dataclass
class Served:
    """What happened to one request."""

    ask: Ask
    cost_micros: int = 0
    hit: str | None = None  # exact | semantic
    source: int | None = None  # the request whose answer a hit served
    tier: str | None = None  # the tier of the model whose answer was served
    quality: bool = False
    wrong_hit: bool = False
    rejected_near_miss: bool = False
    status: str = ""


@dataclass
class Outcome:
    system: str
    served: list[Served] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        n = len(self.served)
        cost = sum(s.cost_micros for s in self.served)
        hits = [s for s in self.served if s.hit]
        called = [s for s in self.served if s.hit is None and s.tier is not None]
        rank = QUALITY_TIERS.index
        under = [s for s in called if rank(s.tier or "small") < rank(s.ask.tier)]
        over = [s for s in called if rank(s.tier or "small") > rank(s.ask.tier)]
        near = [s for s in self.served if s.ask.kind == "near_miss"]
        by_kind = {kind: sum(1 for s in hits if s.ask.kind == kind) for kind in ("repeat", "paraphrase", "near_miss",
                                                                                  "new")}
        under_by_family = Counter(f"{s.ask.meaning[0]} ({s.ask.tier})" for s in under)
        return {
            "requests": n, "cost_micros": cost, "cost_per_1k_usd": round(cost * 1000 / n / 1e6, 4),
            "quality_retained_pct": round(100 * sum(s.quality for s in self.served) / n, 2),
            "hits": len(hits), "hit_rate_pct": round(100 * len(hits) / n, 2),
            "exact_hits": sum(1 for s in hits if s.hit == "exact"),
            "semantic_hits": sum(1 for s in hits if s.hit == "semantic"),
            "wrong_hits": sum(1 for s in hits if s.wrong_hit),
            "wrong_hits_pct_of_hits": round(100 * sum(1 for s in hits if s.wrong_hit) / max(1, len(hits)), 3),
            "hits_by_kind": by_kind,
            "stale_tier_hits": sum(1 for s in hits if not s.wrong_hit and not s.quality),
            "near_misses": len(near), "near_misses_rejected_by_guard": sum(1 for s in near if s.rejected_near_miss),
            # A rejection is a candidate above the similarity threshold that the guard refused: on a near miss a
            # wrong hit avoided, on a repeat or paraphrase that then missed a hit lost (money, not quality).
            "guard_rejections_by_kind": dict(Counter(s.ask.kind for s in self.served if s.rejected_near_miss)),
            "hits_lost_to_guard": sum(1 for s in self.served
                                      if s.rejected_near_miss and not s.hit and s.ask.kind in ("repeat", "paraphrase")),
            "model_calls": len(called),
            "routing_mix": {t: sum(1 for s in called if s.tier == t) for t in QUALITY_TIERS},
            "under_routed": len(under), "over_routed": len(over),
            "under_routed_by_family": dict(under_by_family.most_common()),
            "confusion_label_to_tier": {label: {t: sum(1 for s in called if s.ask.tier == label and s.tier == t)
                                                for t in QUALITY_TIERS} for label in QUALITY_TIERS},
            "not_answered": dict(Counter(s.status for s in self.served if s.tier is None)),
        }


def _envelope(ask: Ask, system: str, settings: Settings) -> Envelope:
    fields: dict[str, Any] = {}
    if system != "tollway":
        fields["cache"] = CacheControl(read=False, write=False)
    if system == "all_large":
        fields["model"] = BASELINE_MODEL
    return new_envelope(ask.text, tenant=ask.tenant, budget_ms=BUDGET_MS, settings=settings,
                        request_id=f"econ-{ask.index}", **fields)


async def run(asks: Sequence[Ask], system: str, *, batch: int = 64, catalog: ModelCatalog | None = None) -> Outcome:
    settings = Settings()
    catalog = catalog or load_catalog()
    tier_of = {m.name: m.quality_tier for m in catalog.models}
    cache_ctx = CacheContext(stage="cache", store=MemoryCacheStore(), embedder=HashingEmbedder(),
                             mirror=SemanticMirror(HashingEmbedder().dim),
                             semantic_threshold=settings.cache_semantic_threshold)
    model_ctx = ModelContext(stage="model", catalog=catalog, backends={"local": LocalBackend(latency_scale=0)})

    async def fill(answered: list[Envelope], _ctx: StageContext) -> None:
        await cache.fill(answered, cache_ctx)

    post_ctx = PostprocessContext(stage="postprocess", after_finish=(fill,))
    outcome = Outcome(system)
    answered_by: dict[int, tuple[Ask, str]] = {}  # request index -> (its ask, the tier of the model that answered)
    for start in range(0, len(asks), batch):
        chunk = asks[start:start + batch]
        envs = [_envelope(ask, system, settings) for ask in chunk]
        await cache.process(envs, cache_ctx)
        await model.process([e for e in envs if e.outcome is None], model_ctx)
        for ask, env in zip(chunk, envs, strict=True):
            if env.model is not None and env.model.model and env.answer is not None and env.outcome is None:
                answered_by[ask.index] = (ask, tier_of[env.model.model])
                env.answer = f"⟦{ask.index}⟧ {env.answer}"  # provenance for a later hit; cost is already settled
        await postprocess.process([e for e in envs if e.outcome is None], post_ctx)
        for ask, env in zip(chunk, envs, strict=True):
            outcome.served.append(_judge(ask, env, answered_by))
    return outcome


def _judge(ask: Ask, env: Envelope, answered_by: dict[int, tuple[Ask, str]]) -> Served:
    served = Served(ask, status=env.outcome.status.value if env.outcome else "open")
    served.rejected_near_miss = bool(env.cache and env.cache.rejected_near_miss)
    ok = env.outcome is not None and env.outcome.status in (Status.OK, Status.CACHE_HIT)
    if not ok or env.answer is None:
        return served
    tagged = _TAG.match(env.answer)
    source = answered_by.get(int(tagged.group(1))) if tagged else None
    if source is None:  # cannot happen: every answer the cache holds was tagged when the model gave it
        raise RuntimeError(f"request {ask.index}: answer without provenance: {env.answer[:80]!r}")
    source_ask, tier = source
    served.tier = tier
    rank = QUALITY_TIERS.index
    if env.cache is not None and env.cache.outcome == "hit":
        served.hit, served.source = env.cache.kind, source_ask.index
        same = source_ask.meaning == ask.meaning and source_ask.tenant == ask.tenant
        served.wrong_hit = not same
        served.quality = same and rank(tier) >= rank(ask.tier)
    else:
        served.cost_micros = env.model.cost_micros if env.model else 0
        served.quality = rank(tier) >= rank(ask.tier)
    return served


@contextmanager
def thresholds(small_below: float, medium_below: float) -> Iterator[None]:
    """The difficulty estimator's tier thresholds, changed for a sweep and restored after."""
    saved = difficulty.SMALL_BELOW, difficulty.MEDIUM_BELOW
    difficulty.SMALL_BELOW, difficulty.MEDIUM_BELOW = small_below, medium_below
    try:
        yield
    finally:
        difficulty.SMALL_BELOW, difficulty.MEDIUM_BELOW = saved


async def measure(requests: int, seed: int, batch: int) -> dict[str, Any]:
    asks = generate(requests, seed)
    results: dict[str, Any] = {"workload": {**describe(asks), "seed": seed, "batch": batch,
                                            "baseline_model": BASELINE_MODEL,
                                            "thresholds": [difficulty.SMALL_BELOW, difficulty.MEDIUM_BELOW]}}
    for system in SYSTEMS:
        results[system] = (await run(asks, system, batch=batch)).figures()
    results["rows"] = rows(results)
    return results


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    toll, routing, large = results["tollway"], results["routing_only"], results["all_large"]
    work = results["workload"]
    cost_ratio = toll["cost_micros"] / large["cost_micros"]
    saving = round(100 * (1 - cost_ratio), 2)
    routing_saving = round(100 * (1 - routing["cost_micros"] / large["cost_micros"]), 2)
    reusable = work["kinds"].get("repeat", 0) + work["kinds"].get("paraphrase", 0)
    ideal_hit_rate = round(100 * reusable / work["requests"], 2)
    calls = max(1, toll["model_calls"])
    rejected = toll["guard_rejections_by_kind"]
    near_stopped = rejected.get("near_miss", 0)
    avoided = near_stopped + rejected.get("new", 0)  # a new question's meaning is in no cache entry of its tenant
    mix = " / ".join(f"{t} {100 * toll['routing_mix'][t] / calls:.1f} %" for t in QUALITY_TIERS)
    under = ", ".join(f"{k} {v}" for k, v in list(toll["under_routed_by_family"].items())[:4])
    synthetic = f"synthetic labelled workload, seed {work['seed']}, {work['requests']} requests"
    return [
        {"figure": "cost per 1,000 requests (routing + caches)", "value": toll["cost_per_1k_usd"], "unit": "$",
         "baseline": large["cost_per_1k_usd"], "baseline_name": f"always {BASELINE_MODEL}, no cache",
         "ratio": round(cost_ratio, 4), "target": "<= 0.40 x baseline", "pass": cost_ratio <= 0.40,
         "note": synthetic},
        {"figure": "cost saving vs always the most capable model", "value": saving, "unit": "%", "baseline": None,
         "ratio": None, "target": ">= 60 %", "pass": saving >= 60.0,
         "note": f"routing alone (no cache) saves {routing_saving} % at {routing['quality_retained_pct']} % quality"},
        {"figure": "quality retained (sufficient tier, or a correct cache hit)", "value": toll["quality_retained_pct"],
         "unit": "%", "baseline": large["quality_retained_pct"], "baseline_name": f"always {BASELINE_MODEL}",
         "ratio": round(toll["quality_retained_pct"] / max(1e-9, large["quality_retained_pct"]), 4),
         "target": ">= 95 %", "pass": toll["quality_retained_pct"] >= 95.0,
         "note": f"under-routed {toll['under_routed']} of {toll['model_calls']} model calls"
                 + (f" ({under})" if under else "")},
        {"figure": "wrong cache hits, share of hits", "value": toll["wrong_hits_pct_of_hits"], "unit": "%",
         "baseline": None, "ratio": None, "target": "<= 1 %", "pass": toll["wrong_hits_pct_of_hits"] <= 1.0,
         "note": f"{toll['wrong_hits']} of {toll['hits']} hits; the near-miss guard refused {avoided} candidates "
                 f"above the similarity threshold that answered another meaning ({near_stopped} of "
                 f"{toll['near_misses']} generated near misses, the rest of those scored below the threshold) and "
                 f"{toll['hits_lost_to_guard']} repeats/paraphrases (hits lost)"},
        {"figure": "cache hit rate", "value": toll["hit_rate_pct"], "unit": "%", "baseline": ideal_hit_rate,
         "baseline_name": "share of repeats + paraphrases in the workload",
         "ratio": round(toll["hit_rate_pct"] / max(1e-9, ideal_hit_rate), 4), "target": None, "pass": None,
         "note": f"exact {toll['exact_hits']}, semantic {toll['semantic_hits']}; by ask: {toll['hits_by_kind']}"},
        {"figure": "model calls routed below the labelled tier", "value": round(100 * toll["under_routed"] / calls, 2),
         "unit": "%", "baseline": None, "ratio": None, "target": None, "pass": None,
         "note": f"routing mix {mix}; over-routed {toll['over_routed']}"},
    ]


def print_summary(results: dict[str, Any]) -> None:
    work = results["workload"]
    print(f"## economics: {work['requests']} requests, {work['tenants']} tenants, {work['meanings']} distinct "
          f"(tenant, meaning) pairs, seed {work['seed']}, stream batches of {work['batch']}")
    print(f"   asks {work['kinds']}; labelled tiers {work['tiers']}; near-miss flips {work['near_miss_flips']}")
    print(f"   {'system':<14}{'$ / 1k req':>12}{'quality %':>11}{'hit rate %':>12}{'wrong hits':>12}  routing mix")
    for system in SYSTEMS:
        f = results[system]
        print(f"   {system:<14}{f['cost_per_1k_usd']:>12.4f}{f['quality_retained_pct']:>11.2f}"
              f"{f['hit_rate_pct']:>12.2f}{f['wrong_hits']:>12}  {f['routing_mix']}")
    toll = results["tollway"]
    print(f"   tollway confusion (label -> routed tier): {toll['confusion_label_to_tier']}")
    print(f"   under-routed by family: {toll['under_routed_by_family']}")
    print(f"   hits by ask kind: {toll['hits_by_kind']}; cached answers of a too-small model reused: "
          f"{toll['stale_tier_hits']}")
    print(f"   near-miss guard: rejections by ask kind {toll['guard_rejections_by_kind']}; repeats/paraphrases that "
          f"missed because of it {toll['hits_lost_to_guard']}")
    for row in results["rows"]:
        verdict = {True: "PASS", False: "FAIL", None: ""}[row["pass"]]
        base = f" (baseline {row['baseline']})" if row["baseline"] is not None else ""
        print(f"   {row['figure']}: {row['value']} {row['unit']}{base}  target {row['target'] or '-'} {verdict}")


async def tune(requests: int, batch: int, grid: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """Cost and quality of the tollway system on the tuning set for each (SMALL_BELOW, MEDIUM_BELOW) pair."""
    asks = generate(requests, TUNING_SEED)
    baseline = (await run(asks, "all_large", batch=batch)).figures()["cost_micros"]
    out = []
    for small_below, medium_below in grid:
        with thresholds(small_below, medium_below):
            figures = (await run(asks, "tollway", batch=batch)).figures()
        out.append({"small_below": small_below, "medium_below": medium_below,
                    "saving_pct": round(100 * (1 - figures["cost_micros"] / baseline), 2),
                    "quality_pct": figures["quality_retained_pct"], "under_routed": figures["under_routed"],
                    "routing_mix": figures["routing_mix"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=MEASURED_SEED, help="the measured set (the tuning set is seed 1)")
    parser.add_argument("--batch", type=int, default=64, help="requests per stream batch")
    parser.add_argument("--tune", action="store_true", help="sweep the difficulty thresholds on the tuning set")
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run.py")
    args = parser.parse_args()
    if args.tune:
        grid = [(s, m) for s in (0.1, 0.15, 0.2, 0.35) for m in (0.3, 0.4, 0.5, 0.6) if s < m]
        for row in asyncio.run(tune(args.requests, args.batch, grid)):
            print(json.dumps(row))
        return
    if args.seed == TUNING_SEED:
        print("warning: seed 1 is the tuning set; the measured set is seed 2026", file=sys.stderr)
    results = asyncio.run(measure(args.requests, args.seed, args.batch))
    print_summary(results)
    if args.json:
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
