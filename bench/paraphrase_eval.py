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
from dataclasses import replace
from pathlib import Path
from typing import Any

from schemas.envelope import ModelResult, PolicyDecision
from streams.clients.envelopes import new_envelope
from workers import retrieval
from workers.cache import stage as cache
from workers.cache.stage import CacheContext
from workers.cache.store import MemoryCacheStore, SemanticMirror
from workers.cache.verifier import PairVerifier, load_verifier
from workers.embedding import Embedder, HashingEmbedder
from workers.retrieval import RetrievalContext
from workers.static_embedding import StaticEmbedder
from workers.vectors.chunks import IndexedChunk
from workers.vectors.index import MemoryVectorIndex

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
SWEEP = [round(0.30 + 0.02 * i, 2) for i in range(34)]  # 0.30 … 0.96
VERIFIER_SWEEP = [round(0.30 + 0.01 * i, 2) for i in range(70)]  # 0.30 … 0.99
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


async def _one_way(embedder: Embedder, verifier: PairVerifier | None, cached: str, query: str
                   ) -> tuple[float, bool, str | None, float | None]:
    """(similarity, passed the guard, guard reason, verifier score) for one cached prompt and one lookup, through
    the real stage with the threshold at ~0 and the verifier's threshold at 0 (so it scores but never refuses)."""
    ctx = CacheContext(stage="cache", store=MemoryCacheStore(), embedder=embedder,
                       mirror=SemanticMirror(embedder.dim), semantic_threshold=1e-6,
                       verifier=None if verifier is None else PairVerifier(
                           verifier_words(verifier), replace(verifier.weights, threshold=0.0)))
    filled = new_envelope(cached, tenant="bench", budget_ms=10_000)
    filled.answer, filled.model = "answer", ModelResult(model="m", cost_micros=1000)
    await cache.fill([filled], ctx)
    env = new_envelope(query, tenant="bench", budget_ms=10_000)
    env.policy = PolicyDecision(semantic_threshold=1e-6)
    (env,) = await cache.process([env], ctx)
    assert env.cache is not None
    served = env.cache.outcome == "hit"
    reason = None if served else env.cache.refused_reason
    return float(env.cache.similarity or 0.0), served, reason, env.cache.verifier_score


def verifier_words(verifier: PairVerifier) -> Any:
    return verifier._words  # the embedder the verifier reads word vectors from


async def pair_outcomes(embedder: Embedder, verifier: PairVerifier | None,
                        directed: list[tuple[str, str, int]], kinds: list[str | None]) -> list[dict[str, Any]]:
    out = []
    for (query, cached, label), kind in zip(directed, kinds, strict=True):
        similarity, served, reason, score = await _one_way(embedder, verifier, cached, query)
        out.append({"label": "paraphrase" if label else "near_miss", "kind": kind, "similarity": similarity,
                    "served": served, "reason": reason, "verifier": score})
    return out


def _served(o: dict[str, Any], floor: float, verifier_threshold: float | None) -> bool:
    return bool(o["served"] and o["similarity"] >= floor
                and (verifier_threshold is None or (o["verifier"] or 0.0) >= verifier_threshold))


def sweep(outcomes: list[dict[str, Any]], others: list[dict[str, Any]], *, floor: float | None = None
          ) -> list[dict[str, float]]:
    """Without ``floor``: the similarity threshold sweeps (guard only). With it: the similarity threshold stays at
    ``floor`` and the verifier's probability threshold sweeps."""
    para = [o for o in outcomes if o["label"] == "paraphrase"]
    near = [o for o in outcomes if o["label"] == "near_miss"]
    curve = []
    for threshold in (SWEEP if floor is None else VERIFIER_SWEEP):
        sim, ver = (threshold, None) if floor is None else (floor, threshold)
        hits = sum(_served(o, sim, ver) for o in para)
        wrong = sum(_served(o, sim, ver) for o in near)
        above = sum(o["similarity"] >= sim for o in near)
        curve.append({"threshold": threshold, "hit_rate": hits / len(para), "wrong_rate": wrong / len(near),
                      "wrong": wrong, "near_above": above, "refused": above - wrong,
                      "other_wrong_rate": sum(_served(o, sim, ver) for o in others) / len(others)})
    return curve


def best_under(curve: list[dict[str, float]], wrong_max: float) -> dict[str, float] | None:
    ok = [c for c in curve if c["wrong_rate"] <= wrong_max]
    return max(ok, key=lambda c: (c["hit_rate"], -c["threshold"])) if ok else None


def at_threshold(curve: list[dict[str, float]], threshold: float) -> dict[str, float]:
    return min(curve, key=lambda c: abs(c["threshold"] - threshold))


async def recall(embedder: Embedder, split: str, reranker: PairVerifier | None = None) -> dict[str, float]:
    docs = rows("outsider_retrieval_docs.jsonl")
    questions = [q for q in rows("outsider_retrieval.jsonl") if q["split"] == split]
    index = MemoryVectorIndex(embedder.dim)
    chunks = [IndexedChunk(chunk_id=d["id"], doc_id=d["id"], text=d["text"]) for d in docs]
    index.upsert("t", chunks, await embedder.embed([c.text for c in chunks]))
    ctx = RetrievalContext(stage="retrieval", index=index, embedder=embedder, top_k=5, min_score=-1.0,
                           reranker=reranker)
    envs = await retrieval.process([new_envelope(q["question"], tenant="t", budget_ms=10_000) for q in questions],
                                   ctx)
    at1 = at5 = 0
    for question, env in zip(questions, envs, strict=True):
        assert env.retrieval is not None
        found = [p.doc_id for p in env.retrieval.passages]
        at1 += bool(found) and found[0] == question["doc_id"]
        at5 += question["doc_id"] in found[:5]
    return {"questions": len(questions), "recall@1": at1 / len(questions), "recall@5": at5 / len(questions)}


def plot(curves: dict[str, list[dict[str, float]]], marks: dict[str, dict[str, float]], path: Path,
         split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for name, curve in curves.items():
        ax.plot([100 * c["wrong_rate"] for c in curve], [100 * c["hit_rate"] for c in curve], marker=".",
                markersize=3, label=name)
        step = 0.1 if "verifier" not in name else 0.05
        for c in curve:
            if abs(c["threshold"] / step - round(c["threshold"] / step)) < 1e-6:
                ax.annotate(f"{c['threshold']:.2f}", (100 * c["wrong_rate"], 100 * c["hit_rate"]), fontsize=6,
                            textcoords="offset points", xytext=(4, -8))
    for name, c in marks.items():
        ax.plot([100 * c["wrong_rate"]], [100 * c["hit_rate"]], marker="*", markersize=11, linestyle="none",
                label=f"{name}: {c['hit_rate']:.1%} hits, {c['wrong_rate']:.1%} wrong")
    ax.axhspan(100 * TARGET_HIT, 100, xmin=0, xmax=1, alpha=0.08, color="green")
    ax.axvline(100 * TARGET_WRONG, color="green", linestyle="--", linewidth=0.8,
               label=f"target: ≥{TARGET_HIT:.0%} hits at ≤{TARGET_WRONG:.0%} wrong")
    ax.set_xlabel("wrong hits (% of near misses served another question's answer)")
    ax.set_ylabel("paraphrase hit rate (%)")
    ax.set_title(f"Semantic cache, outsider set, {split} split (labels: similarity / verifier threshold)",
                 fontsize=9)
    ax.set_xlim(-1, 60)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


async def run(split: str, png: Path | None) -> dict[str, Any]:
    static = StaticEmbedder()
    verifier = load_verifier(static)
    assert verifier is not None, "workers/cache/verifier_weights.json is missing: python -m bench.fit_verifier"
    floor = float(json.loads((ROOT / "workers" / "cache" / "verifier_weights.json").read_text())["similarity_floor"])
    configs: dict[str, tuple[Embedder, PairVerifier | None]] = {
        "hashing + guard (before)": (HashingEmbedder(), None), "static + guard": (static, None),
        "static + guard + verifier (after)": (static, verifier)}
    pairs = [r for r in rows("outsider_paraphrase.jsonl") if r["split"] == split]
    directed = directions(pairs)
    kinds = [row["kind"] for row in pairs for _ in range(2)]
    others_directed = other_questions(pairs)
    report: dict[str, Any] = {"split": split, "pairs": len(pairs), "other_question_pairs": len(others_directed),
                              "configs": {}}
    curves, marks = {}, {}
    for name, (embedder, pair_verifier) in configs.items():
        outcomes = await pair_outcomes(embedder, pair_verifier, directed, kinds)
        others = await pair_outcomes(embedder, pair_verifier, others_directed, [None] * len(others_directed))
        curve = curves[name] = sweep(outcomes, others, floor=floor if pair_verifier else None)
        shipped = at_threshold(curve, pair_verifier.threshold) if pair_verifier else None
        if shipped is not None:
            marks[f"shipped (floor {floor:.2f}, verifier {pair_verifier.threshold:.2f}; chosen on tune)"] = shipped
        wrong_kinds = Counter(o["kind"] for o in outcomes if o["label"] == "near_miss"
                              and _served(o, floor if pair_verifier else 0.5, pair_verifier.threshold
                                          if pair_verifier else None))
        refused = Counter(o["reason"] for o in outcomes if o["label"] == "paraphrase" and not o["served"])
        report["configs"][name] = {
            "embedder": embedder.name, "sweep": curve, "best_at_1pct_wrong": best_under(curve, TARGET_WRONG),
            "best_at_2pct_wrong": best_under(curve, 0.02), "best_at_5pct_wrong": best_under(curve, 0.05),
            "shipped": shipped, "wrong_hits_by_kind": dict(wrong_kinds.most_common()),
            "paraphrases_refused_by_guard": dict(refused.most_common()),
        }
    report["retrieval"] = {"hashing (before)": await recall(HashingEmbedder(), split),
                           "static": await recall(static, split),
                           "static + verifier rerank of the top 5 (after)": await recall(static, split, verifier)}
    if png is not None:
        plot(curves, marks, png, split)
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"## outsider paraphrase / near-miss set, {report['split']} split ({report['pairs']} pairs, both ways; "
          f"{report['other_question_pairs']} other-question control pairs)")
    for name, r in report["configs"].items():
        print(f"### {name}: {r['embedder']}")
        print("  threshold  paraphrase hits  wrong hits (of near misses)  other-question wrong  near misses refused")
        for c in r["sweep"]:
            if abs(c["threshold"] * 20 - round(c["threshold"] * 20)) < 1e-6 or c is r["shipped"]:
                print(f"  {c['threshold']:.2f}       {c['hit_rate']:6.1%}           {c['wrong_rate']:6.1%} "
                      f"({c['wrong']})          {c['other_wrong_rate']:6.1%}           "
                      f"{c['refused']}/{c['near_above']}")
        for key in ("best_at_1pct_wrong", "best_at_2pct_wrong", "best_at_5pct_wrong"):
            best = r[key]
            if best:
                print(f"  {key} (threshold read off this split's curve, not chosen on it): {best['threshold']:.2f}"
                      f" → hits {best['hit_rate']:.1%}, wrong {best['wrong_rate']:.1%}")
        if r["shipped"]:
            c = r["shipped"]
            print(f"  SHIPPED operating point (chosen on tune): hits {c['hit_rate']:.1%}, wrong {c['wrong_rate']:.1%}"
                  f" ({c['wrong']}), other-question wrong {c['other_wrong_rate']:.1%}")
        print(f"  near misses served (at the shipped point / threshold 0.5), by kind: {r['wrong_hits_by_kind']}")
        print(f"  paraphrases refused by the guard, by reason: {r['paraphrases_refused_by_guard']}")
    for name, rr in report["retrieval"].items():
        print(f"retrieval {name} ({rr['questions']} questions): recall@1 {rr['recall@1']:.1%}  "
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
