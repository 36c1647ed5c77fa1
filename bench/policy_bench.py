"""Policy-stage service time per request in a batch of 500, with in-memory and with Redis limits.

The batch is what a consumer poll hands the stage: 500 requests, a fifth of them carrying PII, all under the example
policy (PII redaction, injection scoring, RPM/TPM limits and day/month budgets). Run:
``.venv/bin/python -m bench.policy_bench [--redis redis://127.0.0.1:6379/0] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from schemas.envelope import Envelope
from schemas.policy import load_policy_yaml
from streams.clients.envelopes import new_envelope
from workers import policy
from workers.limits import Limits, MemoryLimits, RedisLimits
from workers.policy import PolicyContext, StaticPolicy

PROMPTS = [
    "What is our refund policy for annual plans?",
    "Summarise the onboarding guide in three bullet points.",
    "Please update the billing contact to jane.doe@example.com and call me on (415) 555-2671.",
    "How do I rotate an API key?",
    "Classify this ticket: the invoice total is wrong for customer 5512, IBAN DE89 3704 0044 0532 0130 00.",
]
EXAMPLE = Path(__file__).resolve().parent.parent / "infra" / "policy.example.yaml"


def batch(size: int) -> list[Envelope]:
    doc_limits_friendly = [PROMPTS[i % len(PROMPTS)] for i in range(size)]
    return [new_envelope(text, tenant="acme", budget_ms=60_000, request_id=uuid.uuid4().hex)
            for text in doc_limits_friendly]


async def measure(limits: Limits, prefix: str, size: int, rounds: int) -> tuple[list[float], list[float]]:
    """(wall µs per request, this process's CPU µs per request) for each round."""
    doc = load_policy_yaml(EXAMPLE.read_text())
    # generous limits: the benchmark measures the work, not the refusals
    acme = doc.tenants["acme"].model_copy(update={
        "rate_limits": doc.tenants["acme"].rate_limits.model_copy(update={"requests_per_minute": 10**9,
                                                                          "tokens_per_minute": 10**12}),
        "budgets": doc.tenants["acme"].budgets.model_copy(update={"daily_micros": 10**15,
                                                                  "monthly_micros": 10**15})})
    doc = doc.model_copy(update={"tenants": {**doc.tenants, "acme": acme}})
    ctx = PolicyContext(stage="policy", topic_prefix=prefix, policy=StaticPolicy(doc), limits=limits)
    await policy.process(batch(50), ctx)  # warm up regexes and the script cache
    wall_us: list[float] = []
    cpu_us: list[float] = []
    for _ in range(rounds):
        envs = batch(size)
        started, started_cpu = time.perf_counter(), time.process_time()
        out = await policy.process(envs, ctx)
        elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        assert sum(1 for e in out if not e.terminal) == size, [e.outcome for e in out if e.terminal][:3]
        wall_us.append(elapsed / size * 1e6)
        cpu_us.append(elapsed_cpu / size * 1e6)
    return wall_us, cpu_us


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    memory = await measure(MemoryLimits(), "bench", args.size, args.rounds)
    client = aioredis.Redis.from_url(args.redis)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    try:
        redis = await measure(RedisLimits(client, prefix), prefix, args.size, args.rounds)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i:i + 1000])
        await client.aclose()
    print(f"policy stage, batch of {args.size}, {args.rounds} rounds; µs per request")
    print(f"{'backend':<10} {'wall p50':>9} {'wall min':>9} {'cpu p50':>9} {'cpu min':>9}  batch wall p50")
    for name, (wall, cpu) in (("in-memory", memory), ("redis", redis)):
        print(f"{name:<10} {statistics.median(wall):9.1f} {min(wall):9.1f} {statistics.median(cpu):9.1f} "
              f"{min(cpu):9.1f}  {statistics.median(wall) * args.size / 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
