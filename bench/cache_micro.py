"""CPU per record of the cache lookup and of post-process with its cache fill, against a cache that already holds
thousands of entries — what ``tollway worker all+`` does at saturation, which bench.micro's empty in-memory cache
does not show (its semantic index stays small, and its post-process has no fill hook).

Each repetition: a fresh cache (its own Redis namespace, or a new in-memory store) is loaded with ``--entries``
answers (one pipelined ``put`` per 500; not measured), then ``--requests`` distinct bench.load prompts go through, in
batches of ``--batch``: retrieval + policy (not measured; with no documents indexed, as in bench.run, retrieval
embeds nothing, so the lookup embeds each prompt and the fill finds it in the process's memo), the cache lookup
(measured), the model (not measured) and post-process
with the cache fill as its ``after_finish`` hook (measured). The cache grows by each batch's fills, and the next
batch's lookup reads them from the log, as in a worker. Stages run with the deployment's embedder and verifier
(``TOLLWAY_EMBEDDER``, default static) on a fixed clock, so two runs store the same entries.

Figures are process CPU (``time.process_time_ns``) per record, the minimum over repetitions, and include the Redis
client's work in this process; the Redis server's own CPU over the same calls (``INFO cpu``, 10 ms resolution) is
reported beside them.

    python -m bench.cache_micro [--store memory|redis] [--entries 8000] [--requests 4000] [--batch 200]
                                [--repeat 3] [--mix] [--dump out.jsonl] [--profile out.prof] [--json]

``--dump`` writes, per request, its cache result and post-process outcome, then every stored entry and semantic log
record in order: two trees give byte-identical dumps when they behave the same (the sameness check of a speed-up).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from bench.load import BENCH_BUDGET_MS, prompt, request
from schemas.envelope import Envelope
from streams.clients.envelopes import new_envelope
from streams.runtime.codec import decode_as, encode
from streams.runtime.connections import redis_client
from streams.runtime.worker_process import tune_gc
from streams.settings import Settings, load_settings
from streams.stages import registry
from streams.stages.embedders import open_embedder
from workers import embedding
from workers.cache import stage as cache
from workers.cache.stage import CacheContext
from workers.cache.store import CacheStore, MemoryCacheStore, RedisCacheStore, SemanticMirror, vector_space
from workers.cache.verifier import load_verifier
from workers.context import FakeClock, StageContext, derive
from workers.detectors.redaction import PiiRedactor
from workers.embedding import Embedder
from workers.postprocess import PostprocessContext

_PRELOAD_RUN = 200_000  # prompt indexes of the preloaded entries; the measured requests use 0..requests-1


def _base(stage: str, settings: Settings, clock: FakeClock) -> StageContext:
    return StageContext(stage=stage, worker_id=settings.worker_id, clock=clock, topic_prefix=settings.topic_prefix)


async def _upstream(values: Sequence[bytes], settings: Settings, clock: FakeClock) -> list[bytes]:
    """Retrieval then policy on their in-memory backends: the envelopes as the cache stage receives them."""
    batch = [decode_as(v, Envelope) for v in values]
    for name in ("retrieval", "policy"):
        spec = registry.stage(name)
        batch = await spec.process(batch, spec.memory_context(_base(name, settings, clock)))
    return [encode(env) for env in batch]


async def _answered(batch: list[Envelope], settings: Settings, clock: FakeClock) -> list[Envelope]:
    spec = registry.stage("model")
    out: list[Envelope] = await spec.process(batch, spec.memory_context(_base("model", settings, clock)))
    return out


async def _preload(entries: int, batch: int, settings: Settings, clock: FakeClock, ctx: CacheContext) -> None:
    for start in range(0, entries, batch):
        values = [request("pre", i, prompt_index=_PRELOAD_RUN + i)[1]
                  for i in range(start, min(entries, start + batch))]
        envs = [decode_as(v, Envelope) for v in await _upstream(values, settings, clock)]
        await cache.fill(await _answered(envs, settings, clock), ctx)


async def _redis_cpu_s(client: Redis | None) -> float:
    """The Redis server's CPU seconds so far (0 without Redis)."""
    if client is None:
        return 0.0
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _measured(i: int, args: argparse.Namespace) -> bytes:
    """Request ``i`` of the measured phase: a new prompt, or with ``--mix`` one in four of each kind: a preloaded
    prompt again (an exact hit), reworded (semantic candidates), with another ticket word (near misses)."""
    kind = i % 4 if args.mix else 0
    if kind == 0 or args.entries == 0:
        return request("sat", i, prompt_index=i)[1]
    text = prompt(_PRELOAD_RUN + (i * 7919) % args.entries)
    if kind == 2:
        text = text.replace("How do I", "How can I").replace("Explain how to", "Tell me how to").lower()
    elif kind == 3:
        words = text.split()
        words[-2] = words[-2][::-1]
        text = " ".join(words)
    env = new_envelope(text, tenant="acme", budget_ms=BENCH_BUDGET_MS, request_id=f"sat-{i}")
    return encode(env)


async def _dump_store(store: CacheStore, tenant: str, keys: Sequence[str]) -> list[bytes]:
    lines = []
    for key, entry in zip(keys, await store.get([(tenant, k) for k in keys]), strict=True):
        lines.append(orjson.dumps({"entry": key, "value": None if entry is None else entry.__dict__}))
    records, _ = await store.read_log(tenant, "0")
    for r in records:
        lines.append(orjson.dumps({"log": r.key, "scope": r.scope, "prompt": r.prompt, "x": r.expires_at_ms,
                                   "v": r.vector.tobytes().hex()}))
    return lines


async def run_once(args: argparse.Namespace, settings: Settings, embedder: Embedder, rep: int,
                   inputs: list[list[bytes]], profiler: cProfile.Profile | None = None
                   ) -> tuple[dict[str, float], list[bytes]]:
    clock = FakeClock()
    prefix = f"cmicro{os.getpid()}r{rep}"
    client = redis_client(settings) if args.store == "redis" else None
    store: CacheStore
    if client is not None:
        store = RedisCacheStore(client, namespace=prefix, vectors=vector_space(embedder))
    else:
        store = MemoryCacheStore(now_ms=lambda: clock.now_ns() // 1_000_000)
    verifier = load_verifier(embedder) if settings.cache_verifier else None

    def cache_context(stage: str) -> CacheContext:  # lookup and fill each have their own, as in the stage wiring
        return derive(CacheContext, _base(stage, settings, clock), store=store, embedder=embedder,
                      mirror=SemanticMirror(embedder.dim), semantic_threshold=settings.cache_semantic_threshold,
                      default_ttl_s=settings.cache_ttl_s, max_ttl_s=settings.cache_max_ttl_s, verifier=verifier)

    lookup_ctx, fill_ctx = cache_context("cache"), cache_context("postprocess")

    async def fill_cache(batch: list[Envelope], _ctx: StageContext) -> None:
        await cache.fill(batch, fill_ctx)

    post_spec = registry.stage("postprocess")
    post_ctx = derive(PostprocessContext, _base("postprocess", settings, clock), redactor=PiiRedactor(),
                      blocked_terms=settings.output_blocked_terms, max_answer_chars=settings.output_max_chars,
                      after_finish=(fill_cache,), eval_sample_rate=settings.eval_sample_rate,
                      eval_grounded_min=settings.eval_grounded_min)
    try:
        await _preload(args.entries, 500, settings, clock, fill_ctx)
        await lookup_ctx.mirror.refresh(store, "acme")  # a worker that has been running: its mirror is current
        cache_ns = post_ns = 0
        redis_s = 0.0
        dump: list[bytes] = []
        for values in inputs:
            batch = [decode_as(v, Envelope) for v in values]
            redis_s -= await _redis_cpu_s(client)
            if profiler is not None:
                profiler.enable()
            started = time.process_time_ns()
            batch = await cache.process(batch, lookup_ctx)
            cache_ns += time.process_time_ns() - started
            to_model = [env for env in batch if "model" in env.route]
            if profiler is not None:
                profiler.disable()
            await _answered(to_model, settings, clock)
            if profiler is not None:
                profiler.enable()
            started = time.process_time_ns()
            batch = await post_spec.process(batch, post_ctx)
            post_ns += time.process_time_ns() - started
            if profiler is not None:
                profiler.disable()
            redis_s += await _redis_cpu_s(client)
            if args.dump:
                dump.extend(orjson.dumps({"id": env.request_id, "cache": env.cache.model_dump(mode="json")
                                          if env.cache else None, "answer": env.answer,
                                          "post": env.postprocess.model_dump(mode="json") if env.postprocess else None,
                                          "outcome": env.outcome.model_dump(mode="json") if env.outcome else None})
                            for env in batch)
        if args.dump:
            ids = [cache.cache_keys(decode_as(v, Envelope))[1] for values in inputs for v in values]
            dump.extend(await _dump_store(store, "acme", ids))
        requests = sum(len(values) for values in inputs)
        figures = {"cache": cache_ns / requests / 1000, "postprocess": post_ns / requests / 1000}
        if client is not None:
            figures["redis_server"] = redis_s * 1e6 / requests
        return figures, dump
    finally:
        if client is not None:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start:start + 1000])
            await client.aclose()


async def measure(args: argparse.Namespace) -> tuple[dict[str, Any], list[bytes]]:
    settings = load_settings()
    settings = Settings(**{**settings.model_dump(), "topic_prefix": "cmicro", "worker_id": "bench-cache-micro"})
    clock = FakeClock()
    values = [_measured(i, args) for i in range(args.requests)]
    inputs = [await _upstream(values[start:start + args.batch], settings, clock)
              for start in range(0, len(values), args.batch)]
    best: dict[str, float] = {}
    async with open_embedder(settings) as embedder:
        dump: list[bytes] = []
        for rep in range(args.repeat):
            for memo in embedding._MEMOS.values():  # every prompt new to the process, as at saturation
                memo.rows.clear()
            profiler = cProfile.Profile() if args.profile and rep == args.repeat - 1 else None
            figures, dump = await run_once(args, settings, embedder, rep, inputs, profiler)
            if profiler is not None:
                profiler.dump_stats(args.profile)
            best = {k: min(v, best.get(k, v)) for k, v in figures.items()}
    return {"store": args.store, "entries": args.entries, "requests": args.requests, "batch": args.batch,
            "repeat": args.repeat, "embedder": settings.embedder, "unit": "µs CPU per record",
            **{k: round(v, 1) for k, v in best.items()}, "load": os.getloadavg()[0]}, dump


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument("--entries", type=int, default=8000, help="answers in the cache before the first batch")
    parser.add_argument("--requests", type=int, default=4000, help="distinct prompts looked up (and filled)")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mix", action="store_true",
                        help="some requests repeat or reword preloaded prompts (hits, near misses: sameness checks)")
    parser.add_argument("--dump", help="write results and stored entries here (sameness checks)")
    parser.add_argument("--profile", help="cProfile the measured calls of the last repetition into this file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tune_gc()
    result, dump = asyncio.run(measure(args))
    if args.dump:
        with open(args.dump, "wb") as out:
            out.write(b"\n".join(dump) + b"\n")
    if args.json:
        print(orjson.dumps(result).decode())
        return
    print(f"{args.store}: {args.entries} entries, {args.requests} requests in batches of {args.batch}, "
          f"{result['embedder']} embedder: cache {result['cache']} µs, postprocess+fill {result['postprocess']} µs"
          + (f", Redis server {result['redis_server']} µs" if "redis_server" in result else "")
          + f" CPU per record (min of {args.repeat}; load {result['load']:.2f})")


if __name__ == "__main__":
    main()
