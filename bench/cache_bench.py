"""Cache and retrieval figures (not a test): `.venv/bin/python bench/cache_bench.py [--sizes 10000 100000]`.

1. Semantic lookup latency: a tenant namespace of N entries in a :class:`SemanticMirror` (float16 rows, LSH
   shortlist above 8k rows); one lookup = embed-free ``mirror.search`` of one query, timed p50/p99 over 2,000 lookups;
   also a batch of 32 queries per call (per-query cost).
2. Paraphrase / near-miss set (bench/data/cache_pairs.jsonl): each "cached" prompt is filled, each "query" is looked
   up through ``workers.cache.process``: hit rate on paraphrases, wrong hits (hits on near misses) as a share of all
   hits, near-miss rejections by the guard.
3. Retrieval recall@5 on the shipped corpus (infra/corpus) with bench/data/retrieval_questions.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.envelope import ModelResult, PolicyDecision  # noqa: E402
from streams.client import new_envelope  # noqa: E402
from streams.index_store import chunk_file, to_indexed  # noqa: E402
from workers import cache, retrieval  # noqa: E402
from workers.cache import CacheContext  # noqa: E402
from workers.cache_store import LogRecord, MemoryCacheStore, SemanticMirror  # noqa: E402
from workers.embedding import HashingEmbedder  # noqa: E402
from workers.retrieval import RetrievalContext  # noqa: E402
from workers.vector_index import IndexedChunk, MemoryVectorIndex  # noqa: E402

EMBED = HashingEmbedder()
_WORD_TEXT = ("refund invoice plan annual monthly key rotate limit password reset team invite workspace sso saml "
              "shipping warranty claim order customs export import billing seat admin member report dashboard api "
              "webhook token quota region backup restore delete archive audit log alert incident")
WORDS = _WORD_TEXT.split()
TEMPLATES = ("How do I {a} my {b}?", "What is the {a} {b} policy?", "Can I {a} the {b} after {n} days?",
             "Why does my {a} {b} fail?", "Where is the {a} for {b} {n}?", "Is {a} {b} included in plan {n}?")


def synthetic_prompts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES).format(a=rng.choice(WORDS), b=rng.choice(WORDS), n=rng.randint(1, 500))
            for _ in range(n)]


def latency(sizes: list[int]) -> None:
    print("## semantic lookup latency (one tenant namespace)")
    for size in sizes:
        prompts = synthetic_prompts(size)
        vectors = EMBED.embed_sync(prompts)
        mirror = SemanticMirror(EMBED.dim)
        mirror.add("t", [LogRecord(f"k{i}", "scope", p, 2**62, v) for i, (p, v) in enumerate(zip(prompts, vectors,
                                                                                                  strict=True))])
        queries = EMBED.embed_sync([p.rstrip("?") + " please?" for p in prompts[:2000]])
        times, hits = [], 0
        for i in range(len(queries)):
            started = time.perf_counter()
            found = mirror.search("t", ["scope"], queries[i:i + 1], k=3, threshold=0.88, now_ms=0)
            times.append(time.perf_counter() - started)
            hits += bool(found[0]) and found[0][0].key == f"k{i}"
        batch_times = []
        for start in range(0, len(queries), 32):
            block = queries[start:start + 32]
            started = time.perf_counter()
            mirror.search("t", ["scope"] * len(block), block, k=3, threshold=0.88, now_ms=0)
            batch_times.append((time.perf_counter() - started) / len(block))
        ms = np.array(times) * 1e3
        print(f"{size:>7} entries: single p50 {np.percentile(ms, 50):.3f} ms  p99 {np.percentile(ms, 99):.3f} ms  "
              f"| batch-32 per query p50 {np.percentile(batch_times, 50) * 1e3:.3f} ms  "
              f"p99 {np.percentile(batch_times, 99) * 1e3:.3f} ms  | own entry found {hits / len(queries):.1%}")


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def pairs(rows: list[dict[str, str]]) -> None:
    print("## paraphrase / near-miss set")
    for threshold in (0.8, 0.85, 0.88, 0.92):
        counts = {"paraphrase": 0, "paraphrase_hard": 0, "near_miss": 0}
        hits = {"paraphrase": 0, "paraphrase_hard": 0, "near_miss": 0}
        rejected = 0
        for row in rows:  # a fresh store per pair: one cached prompt, one lookup
            ctx = CacheContext(stage="cache", store=MemoryCacheStore(), mirror=SemanticMirror(EMBED.dim),
                               semantic_threshold=threshold)
            cached = new_envelope(row["cached"], tenant="bench", budget_ms=10_000)
            cached.answer, cached.model = "answer", ModelResult(model="m", cost_micros=1000)
            await cache.fill([cached], ctx)
            query = new_envelope(row["query"], tenant="bench", budget_ms=10_000)
            query.policy = PolicyDecision(semantic_threshold=threshold)
            (query,) = await cache.process([query], ctx)
            counts[row["label"]] += 1
            assert query.cache is not None
            hits[row["label"]] += query.cache.outcome == "hit"
            rejected += query.cache.rejected_near_miss and row["label"] == "near_miss"
        total_hits = sum(hits.values())
        print(f"threshold {threshold}: paraphrase hit rate {hits['paraphrase']}/{counts['paraphrase']}, "
              f"hard paraphrases {hits['paraphrase_hard']}/{counts['paraphrase_hard']}, "
              f"wrong hits {hits['near_miss']}/{total_hits} of hits "
              f"({hits['near_miss'] / max(1, total_hits):.1%}), near misses rejected by the guard "
              f"{rejected}/{counts['near_miss']} (the rest fell below the threshold)")


async def recall(rows: list[dict[str, str]], chunks_by_tenant: dict[str, list[IndexedChunk]]) -> None:
    print("## retrieval recall@5 on infra/corpus")
    index = MemoryVectorIndex(EMBED.dim)
    for tenant, chunks in chunks_by_tenant.items():
        index.upsert(tenant, chunks, EMBED.embed_sync([c.text for c in chunks]))
    ctx = RetrievalContext(stage="retrieval", index=index, top_k=5, min_score=-1.0)
    envs = [new_envelope(r["question"], tenant=r["tenant"], budget_ms=10_000) for r in rows]
    out = await retrieval.process(envs, ctx)
    at1 = at5 = 0
    for row, env in zip(rows, out, strict=True):
        assert env.retrieval is not None
        docs = [p.doc_id.split("#")[0] for p in env.retrieval.passages]
        at1 += bool(docs) and docs[0] == row["doc"]
        at5 += row["doc"] in docs[:5]
    print(f"{len(rows)} questions: recall@1 {at1 / len(rows):.1%}  recall@5 {at5 / len(rows):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    args = parser.parse_args()
    asyncio.run(pairs(_rows(ROOT / "bench" / "data" / "cache_pairs.jsonl")))
    corpus = {d.name: [to_indexed(c) for f in sorted(d.glob("*.md")) for c in chunk_file(f, tenant=d.name)]
              for d in sorted((ROOT / "infra" / "corpus").iterdir())}
    asyncio.run(recall(_rows(ROOT / "bench" / "data" / "retrieval_questions.jsonl"), corpus))
    latency(args.sizes)


if __name__ == "__main__":
    main()
