"""The outsider sets through the real cache and retrieval stages (not a test): ``python -m bench.paraphrase_eval``.

Data (bench/data/outsider_*.jsonl, copied from an evaluation set written before any tuning; see its README in
docs/SEMANTIC_CACHE.md): 1,092 paraphrase / near-miss pairs and 216 retrieval questions over 83 documents, each
split tune/test by group. Thresholds and the guard were tuned on ``tune``; this reports ``test`` only
(``--split tune`` to see the tuning figures).

1. Cache: per pair a fresh store; ``a`` is filled through ``workers.cache.stage.fill`` and ``b`` looked up through
   ``workers.cache.stage.process`` (and the reverse direction), with the policy threshold at ~0 so the stage
   reports the similarity and the guard's verdict; a threshold ``t`` then serves exactly the pairs whose
   similarity is >= ``t`` and which the guard passed. Paraphrase hit rate and wrong-hit rate (hits on near misses,
   as a share of near misses) over a threshold sweep, per embedder; the sweep as a PNG.
2. Retrieval: recall@1 / @5 of ``workers.retrieval.process`` on the questions, per embedder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from schemas.envelope import ModelResult, PolicyDecision
from streams.clients.envelopes import new_envelope
from workers import retrieval
from workers.cache import stage as cache
from workers.cache.stage import CacheContext
from workers.cache.store import MemoryCacheStore, SemanticMirror
from workers.embedding import Embedder, HashingEmbedder
from workers.retrieval import RetrievalContext
from workers.static_embedding import StaticEmbedder
from workers.vectors.chunks import IndexedChunk
from workers.vectors.index import MemoryVectorIndex

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
SWEEP = [round(0.30 + 0.02 * i, 2) for i in range(34)]  # 0.30 … 0.96
TARGET_HIT, TARGET_WRONG = 0.60, 0.01


def rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def directions(pairs: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(query, cached prompt, 1 for a paraphrase / 0 for a near miss), both ways round for every pair."""
    return [(query, cached, int(row["label"] == "paraphrase"))
            for row in pairs for cached, query in ((row["a"], row["b"]), (row["b"], row["a"]))]


def other_questions(pairs: list[dict[str, Any]], per_group: int = 3, seed: int = 19) -> list[tuple[str, str, int]]:
    """A control set of negatives: (query, cached, 0) with the two prompts from different groups of the same domain
    (another domain where a domain has one group in the split). Near misses are minimal edits; these are whole
    other questions, so a verifier that learnt "few shared words = paraphrase" shows up here."""
    rng = random.Random(seed)
    by_domain: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row in pairs:
        by_domain[row["domain"]][row["group"]].update((row["a"], row["b"]))
    out = []
    for domain in sorted(by_domain):
        groups = by_domain[domain]
        for group in sorted(groups):
            for _ in range(per_group):
                others = [g for g in sorted(groups) if g != group]
                if others:
                    pool = groups[rng.choice(others)]
                else:
                    other_domain = rng.choice([d for d in sorted(by_domain) if d != domain])
                    pool = set().union(*by_domain[other_domain].values())
                out.append((rng.choice(sorted(groups[group])), rng.choice(sorted(pool)), 0))
    return out


async def _one_way(embedder: Embedder, cached: str, query: str) -> tuple[float, bool, str | None]:
    """(similarity, served by the guard, guard reason) for one cached prompt and one lookup."""
    ctx = CacheContext(stage="cache", store=MemoryCacheStore(), embedder=embedder,
                       mirror=SemanticMirror(embedder.dim), semantic_threshold=1e-6)
    filled = new_envelope(cached, tenant="bench", budget_ms=10_000)
    filled.answer, filled.model = "answer", ModelResult(model="m", cost_micros=1000)
    await cache.fill([filled], ctx)
    env = new_envelope(query, tenant="bench", budget_ms=10_000)
    env.policy = PolicyDecision(semantic_threshold=1e-6)
    (env,) = await cache.process([env], ctx)
    assert env.cache is not None
    served = env.cache.outcome == "hit"
    reason = None if served else cache.near_miss(query, cached)
    return float(env.cache.similarity or 0.0), served, reason


async def pair_outcomes(embedder: Embedder, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in pairs:
        for cached, query in ((row["a"], row["b"]), (row["b"], row["a"])):
            similarity, served, reason = await _one_way(embedder, cached, query)
            out.append({"label": row["label"], "kind": row["kind"], "overlap": row.get("overlap"),
                        "similarity": similarity, "served": served, "reason": reason})
    return out


def sweep(outcomes: list[dict[str, Any]]) -> list[dict[str, float]]:
    para = [o for o in outcomes if o["label"] == "paraphrase"]
    near = [o for o in outcomes if o["label"] == "near_miss"]
    curve = []
    for threshold in SWEEP:
        hits = sum(o["served"] and o["similarity"] >= threshold for o in para)
        wrong = sum(o["served"] and o["similarity"] >= threshold for o in near)
        above = sum(o["similarity"] >= threshold for o in near)
        curve.append({"threshold": threshold, "hit_rate": hits / len(para), "wrong_rate": wrong / len(near),
                      "wrong": wrong, "near_above": above, "guard_refused": above - wrong})
    return curve


def best_under(curve: list[dict[str, float]], wrong_max: float) -> dict[str, float] | None:
    ok = [c for c in curve if c["wrong_rate"] <= wrong_max]
    return max(ok, key=lambda c: (c["hit_rate"], -c["threshold"])) if ok else None


async def recall(embedder: Embedder, split: str) -> dict[str, float]:
    docs = rows("outsider_retrieval_docs.jsonl")
    questions = [q for q in rows("outsider_retrieval.jsonl") if q["split"] == split]
    index = MemoryVectorIndex(embedder.dim)
    chunks = [IndexedChunk(chunk_id=d["id"], doc_id=d["id"], text=d["text"]) for d in docs]
    index.upsert("t", chunks, await embedder.embed([c.text for c in chunks]))
    ctx = RetrievalContext(stage="retrieval", index=index, embedder=embedder, top_k=5, min_score=-1.0)
    envs = await retrieval.process([new_envelope(q["question"], tenant="t", budget_ms=10_000) for q in questions],
                                   ctx)
    at1 = at5 = 0
    for question, env in zip(questions, envs, strict=True):
        assert env.retrieval is not None
        found = [p.doc_id for p in env.retrieval.passages]
        at1 += bool(found) and found[0] == question["doc_id"]
        at5 += question["doc_id"] in found[:5]
    return {"questions": len(questions), "recall@1": at1 / len(questions), "recall@5": at5 / len(questions)}


def plot(curves: dict[str, list[dict[str, float]]], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, curve in curves.items():
        ax.plot([100 * c["wrong_rate"] for c in curve], [100 * c["hit_rate"] for c in curve], marker=".", label=name)
        for c in curve:
            if round(c["threshold"] * 50) % 5 == 0:  # label every 0.1
                ax.annotate(f"{c['threshold']:.1f}", (100 * c["wrong_rate"], 100 * c["hit_rate"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -8))
    ax.axhspan(100 * TARGET_HIT, 100, xmin=0, xmax=1, alpha=0.08, color="green")
    ax.axvline(100 * TARGET_WRONG, color="green", linestyle="--", linewidth=0.8,
               label=f"target: ≥{TARGET_HIT:.0%} hits at ≤{TARGET_WRONG:.0%} wrong")
    ax.set_xlabel("wrong hits (% of near misses served another question's answer)")
    ax.set_ylabel("paraphrase hit rate (%)")
    ax.set_title(f"Semantic cache threshold sweep (outsider set, {split} split; labels = threshold)")
    ax.set_xlim(left=-1)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


async def run(split: str, png: Path | None) -> dict[str, Any]:
    embedders: dict[str, Embedder] = {"hashing (before)": HashingEmbedder(), "static (after)": StaticEmbedder()}
    pairs = [r for r in rows("outsider_paraphrase.jsonl") if r["split"] == split]
    report: dict[str, Any] = {"split": split, "pairs": len(pairs), "embedders": {}}
    curves = {}
    for name, embedder in embedders.items():
        outcomes = await pair_outcomes(embedder, pairs)
        curve = curves[name] = sweep(outcomes)
        best = best_under(curve, TARGET_WRONG)
        at_best = best["threshold"] if best else 1.0
        wrong_kinds = Counter(o["kind"] for o in outcomes if o["label"] == "near_miss" and o["served"]
                              and o["similarity"] >= 0.5)
        refused = Counter(o["reason"] for o in outcomes if o["label"] == "paraphrase" and not o["served"])
        report["embedders"][name] = {
            "name": embedder.name, "sweep": curve, "best_at_1pct_wrong": best,
            "wrong_hits_by_kind_at_0.5": dict(wrong_kinds.most_common()),
            "paraphrases_refused_by_guard": dict(refused.most_common()),
            "retrieval": await recall(embedder, split), "threshold_at_1pct": at_best,
        }
    if png is not None:
        plot(curves, png, split)
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"## outsider paraphrase / near-miss set, {report['split']} split ({report['pairs']} pairs, both ways)")
    for name, r in report["embedders"].items():
        print(f"### {name}: {r['name']}")
        print("  threshold  paraphrase hits  wrong hits (of near misses)  near misses above thr refused by guard")
        for c in r["sweep"]:
            if round(c["threshold"] * 50) % 5 == 0 or c is r["best_at_1pct_wrong"]:
                print(f"  {c['threshold']:.2f}       {c['hit_rate']:6.1%}           {c['wrong_rate']:6.1%} "
                      f"({c['wrong']})               {c['guard_refused']}/{c['near_above']}")
        best = r["best_at_1pct_wrong"]
        if best:
            print(f"  best with wrong hits <= {TARGET_WRONG:.0%}: threshold {best['threshold']:.2f} → paraphrase hit "
                  f"rate {best['hit_rate']:.1%}, wrong {best['wrong_rate']:.1%}")
        print(f"  near misses served at threshold 0.5, by kind: {r['wrong_hits_by_kind_at_0.5']}")
        print(f"  paraphrases the guard refused, by reason: {r['paraphrases_refused_by_guard']}")
        rr = r["retrieval"]
        print(f"  retrieval ({rr['questions']} questions): recall@1 {rr['recall@1']:.1%}  "
              f"recall@5 {rr['recall@5']:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", choices=("test", "tune"), default="test")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "semantic_cache_sweep.png")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(run(args.split, args.png))
    print_report(report)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
