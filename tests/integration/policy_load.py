"""A policy-stage worker process for the concurrency tests: runs ``workers.policy.process`` on its share of the
requests, many batches at once, against the Redis of ``TOLLWAY_REDIS_URL``, and reports which request ids were
admitted."""

from __future__ import annotations

import asyncio
import random
import threading
from multiprocessing.synchronize import Barrier
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

from schemas.policy import parse_policy
from streams.clients.envelopes import new_envelope
from streams.settings import Settings
from workers import policy
from workers.context import FakeClock
from workers.limits import RedisLimits
from workers.policy import PolicyContext, StaticPolicy


async def _work(doc: dict[str, Any], prefix: str, request_ids: list[str], now_ns: int, seed: int,
                start: Barrier) -> list[tuple[str, int]]:
    client = aioredis.Redis.from_url(Settings().redis_url, max_connections=64)
    ctx = PolicyContext(stage="policy", clock=FakeClock(now_ns), topic_prefix=prefix,
                        policy=StaticPolicy(parse_policy(doc)), limits=RedisLimits(client, prefix),
                        principal_secret=SecretStr("unused"))
    envs = [new_envelope("How much is the annual plan?", tenant="acme", budget_ms=60_000, request_id=rid)
            for rid in request_ids]
    rng = random.Random(seed)
    batches: list[list[Any]] = []
    while envs:  # uneven batch sizes, as a consumer sees them
        size = rng.randint(1, 25)
        batches.append(envs[:size])
        envs = envs[size:]
    await client.ping()
    await asyncio.to_thread(start.wait, 30)
    results = await asyncio.gather(*(policy.process(batch, ctx) for batch in batches))
    await client.aclose()
    return [(env.request_id, env.policy.reserved_micros if env.policy else 0)
            for batch in results for env in batch if not env.terminal]


def run_worker(doc: dict[str, Any], prefix: str, request_ids: list[str], now_ns: int, seed: int, start: Barrier,
               out: Any) -> None:
    # Forked from a thread that runs an event loop: run ours in a fresh thread, which has no loop of its own yet.
    result: list[list[tuple[str, int]]] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(_work(doc, prefix, request_ids, now_ns,
                                                                               seed, start))))
    worker.start()
    worker.join()
    out.put(result[0])
