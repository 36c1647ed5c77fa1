"""Budgets under a race, on the real Redis: two limiter instances (two connection pools, as two policy replicas
have), 500 requests at once, each reserved by the policy stage, billed by the local model and settled.

* adversarial prompts ("a," × 900, max_tokens 8: one token per character, 4× a characters/4 estimate): the spend
  never passes the cap (issue 16: 163–246 % of it);
* small requests whose clients honour Retry-After: refusals while reservations are in flight say "retry in a
  second", and the tenant spends ≥ 90 % of its budget before a refusal says "spent" (issue 16: 364 of 500 refused
  with 95 % unspent, each told to wait for midnight).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from schemas.envelope import Envelope, GenerationParams
from schemas.policy import PolicyDocument, parse_policy
from streams.clients.envelopes import new_envelope
from streams.settings import Settings
from workers import model, policy
from workers.backends.local import LocalBackend
from workers.context import FakeClock
from workers.limits import HELD_SUFFIX, IN_FLIGHT_RETRY_S, RedisLimits
from workers.model import ModelContext
from workers.policy import PolicyContext, StaticPolicy, settlement_for
from workers.routing.catalog import load_catalog

REQUESTS = 500
NOW_NS = 1_764_400_000_000_000_000  # pinned: 2025-11-29T07:06:40Z
CATALOG = load_catalog()


def document(cap_micros: int) -> PolicyDocument:
    prices = {m.name: {"region": m.region, "input_micros_per_mtok": m.prices.input_micros_per_mtok,
                       "output_micros_per_mtok": m.prices.output_micros_per_mtok} for m in CATALOG.models}
    return parse_policy({"version": "race-1", "models": prices, "tenants": {"acme": {
        "require_principal": False, "allowed_models": ["nano-us", "lite-us"], "injection": {"action": "allow"},
        "budgets": {"daily_micros": cap_micros}}}})


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[list[RedisLimits], aioredis.Redis, str]]:
    prefix = f"trace{uuid.uuid4().hex[:10]}"
    url = Settings().redis_url
    clients = [aioredis.Redis.from_url(url, max_connections=32) for _ in range(2)]
    yield [RedisLimits(client, prefix) for client in clients], clients[0], prefix
    keys = [k async for k in clients[0].scan_iter(match=f"{prefix}:*")]
    if keys:
        await clients[0].delete(*keys)
    for client in clients:
        await client.aclose()


@dataclass
class Tally:
    spent_micros: int = 0  # Σ billed cost of the requests served
    served: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # by reason: in_flight / spent / too_large
    retry_after_s: dict[str, set[float | None]] = field(default_factory=dict)


async def replica(limits: RedisLimits, doc: PolicyDocument, waves: list[list[Envelope]], tally: Tally, *,
                  retry: bool) -> None:
    """One policy replica: admit a batch, bill each admitted request on the local model, settle it — batches
    concurrently. With ``retry``, a client refused for reservations in flight sends its request again."""
    pctx = PolicyContext(stage="policy", clock=FakeClock(NOW_NS), topic_prefix=limits.prefix,
                         policy=StaticPolicy(doc), limits=limits, principal_secret=SecretStr("unused"))
    mctx = ModelContext(stage="model", catalog=CATALOG, backends={"local": LocalBackend(latency_scale=0)})

    async def one_batch(batch: list[Envelope]) -> list[Envelope]:
        fresh = [env.model_copy(deep=True) for env in batch]
        decided = await policy.process(fresh, pctx)
        admitted = [env for env in decided if not env.terminal]
        await model.process(admitted, mctx)
        settlements = [s for env in admitted if (s := settlement_for(env)) is not None]
        await limits.settle_many(settlements)
        tally.served += len(admitted)
        tally.spent_micros += sum(env.model.cost_micros for env in admitted if env.model)
        again = []
        for original, env in zip(batch, decided, strict=True):
            if env.outcome is None or env.outcome.code != "budget_exceeded":
                continue
            reason = ("in_flight" if "in flight" in env.outcome.message else
                      "too_large" if "at all" in env.outcome.message else "spent")
            tally.refusals[reason] += 1
            tally.retry_after_s.setdefault(reason, set()).add(env.outcome.retry_after_s)
            if retry and reason == "in_flight":
                again.append(original)
        return again

    pending = [batch for batch in waves]
    while pending:
        results = await asyncio.gather(*(one_batch(batch) for batch in pending))
        retried = [env for again in results for env in again]
        pending = [retried[i:i + 20] for i in range(0, len(retried), 20)]


async def race(limits: list[RedisLimits], doc: PolicyDocument, envs: list[Envelope], *, retry: bool) -> Tally:
    tally = Tally()
    shares = [envs[0::2], envs[1::2]]
    await asyncio.gather(*(replica(lim, doc, [share[i:i + 25] for i in range(0, len(share), 25)], tally,
                                   retry=retry) for lim, share in zip(limits, shares, strict=True)))
    return tally


async def test_adversarial_prompts_never_overspend(replicas: tuple[list[RedisLimits], aioredis.Redis, str]) -> None:
    limits, client, prefix = replicas
    envs = [new_envelope("a," * 900, tenant="acme", budget_ms=60_000, quality_tier="small", request_id=f"adv-{i}",
                         params=GenerationParams(max_tokens=8)) for i in range(REQUESTS)]
    cap = 20_000  # ~108 of the 500 requests (each billed ~184 µ$)
    tally = await race(limits, document(cap), envs, retry=False)
    day_key = f"{prefix}:budget:acme:day:20251129"
    counter = int(await client.get(day_key) or 0)
    print(f"\nadversarial: spent {tally.spent_micros} / {cap} µ$ ({tally.spent_micros / cap:.1%}), served "
          f"{tally.served}, refused {dict(tally.refusals)}")
    assert counter == tally.spent_micros, "every reservation settled at the billed cost"
    assert int(await client.get(day_key + HELD_SUFFIX) or 0) == 0, "nothing is left held"
    assert tally.spent_micros <= cap, "the reservation bounds the bill: the cap holds exactly"
    assert tally.served + sum(tally.refusals.values()) == REQUESTS


async def test_small_requests_can_spend_the_budget(replicas: tuple[list[RedisLimits], aioredis.Redis, str]) -> None:
    limits, client, prefix = replicas
    envs = [new_envelope(f"How do I rotate API key number {i}?", tenant="acme", budget_ms=60_000,
                         quality_tier="small", request_id=f"small-{i}") for i in range(REQUESTS)]
    cap = 3_000  # each reserves ~160 µ$ (256 output tokens on lite-us) and is billed ~10 µ$: demand > cap
    tally = await race(limits, document(cap), envs, retry=True)
    print(f"\nsmall: spent {tally.spent_micros} / {cap} µ$ ({tally.spent_micros / cap:.1%}), served {tally.served}, "
          f"refused {dict(tally.refusals)}")
    assert tally.spent_micros <= cap
    assert tally.spent_micros >= 0.9 * cap, "a budget is usable by small requests, not only by their reservations"
    assert tally.retry_after_s.get("in_flight", {IN_FLIGHT_RETRY_S}) == {IN_FLIGHT_RETRY_S}
    spent_retry = tally.retry_after_s["spent"]
    assert spent_retry == {16 * 3600 + 53 * 60 + 20.0}, "a spent budget: retry when the day resets"
    assert int(await client.get(f"{prefix}:budget:acme:day:20251129{HELD_SUFFIX}") or 0) == 0
