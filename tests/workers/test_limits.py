"""Limits contract, run against the in-memory and the Redis implementation alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from streams.settings import Settings
from workers.limits import (
    HELD_SUFFIX,
    IN_FLIGHT_RETRY_S,
    AdmissionRequest,
    Limits,
    MemoryLimits,
    RedisLimits,
    Scope,
    build_admission,
)

NOW_NS = 1_764_400_000_000_000_000  # 2025-11-29T07:06:40Z, 40 s into its minute


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def limits(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Limits, str]]:
    prefix = f"tlim{uuid.uuid4().hex[:10]}"
    if request.param == "memory":
        yield MemoryLimits(), prefix
        return
    client = aioredis.Redis.from_url(Settings().redis_url)
    try:
        yield RedisLimits(client, prefix), prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_rate_limit_admits_exactly_the_limit(limits: tuple[Limits, str]) -> None:
    backend, prefix = limits
    scope = [Scope("acme", requests_per_minute=5)]
    verdicts = await backend.admit([build_admission(prefix, f"r{i}", scope, cost_micros=0, tokens=1, now_ns=NOW_NS)
                                    for i in range(8)])
    assert [v.admitted for v in verdicts] == [True] * 5 + [False] * 3
    assert verdicts[-1].code == "rate_limited" and verdicts[-1].retry_after_s == pytest.approx(20.0)
    # the next minute has a fresh window
    later = build_admission(prefix, "next", scope, cost_micros=0, tokens=1, now_ns=NOW_NS + 20_000_000_000)
    assert (await backend.admit([later]))[0].admitted


async def test_tokens_per_minute(limits: tuple[Limits, str]) -> None:
    backend, prefix = limits
    scope = [Scope("acme", tokens_per_minute=1000)]
    sizes = [400, 400, 300, 200]
    verdicts = await backend.admit([build_admission(prefix, f"t{i}", scope, cost_micros=0, tokens=n, now_ns=NOW_NS)
                                    for i, n in enumerate(sizes)])
    assert [v.admitted for v in verdicts] == [True, True, False, True]


async def test_key_limit_denial_leaves_tenant_counters_untouched(limits: tuple[Limits, str]) -> None:
    backend, prefix = limits
    scopes = [Scope("acme", requests_per_minute=100, daily_micros=10_000), Scope("acme/k_1", requests_per_minute=1)]
    first, second = await backend.admit([
        build_admission(prefix, f"k{i}", scopes, cost_micros=100, tokens=1, now_ns=NOW_NS) for i in range(2)])
    assert first.admitted and not second.admitted and second.code == "rate_limited"
    request = build_admission(prefix, "x", scopes, cost_micros=100, tokens=1, now_ns=NOW_NS)
    assert await backend.counter(request.rates[0].key) == 1
    assert await backend.counter(request.budgets[0].key) == 100


async def test_budget_reserve_settle_release(limits: tuple[Limits, str]) -> None:
    backend, prefix = limits
    scope = [Scope("acme", daily_micros=1_000, monthly_micros=5_000)]
    requests = [build_admission(prefix, f"b{i}", scope, cost_micros=300, tokens=1, now_ns=NOW_NS) for i in range(4)]
    verdicts = await backend.admit(requests)
    assert [v.admitted for v in verdicts] == [True, True, True, False]
    assert verdicts[3].code == "budget_exceeded" and verdicts[3].limit_key.endswith(":day:20251129")
    day_key = requests[0].budgets[0].key
    assert await backend.counter(day_key) == 900
    assert await backend.settle("b0", 120)
    assert not await backend.settle("b0", 120), "settles once"
    assert await backend.release("b1")
    assert not await backend.release("b1")
    assert await backend.counter(day_key) == 120 + 0 + 300
    assert not await backend.settle("unknown", 5)


async def test_a_redelivered_batch_is_not_counted_twice(limits: tuple[Limits, str]) -> None:
    backend, prefix = limits
    scope = [Scope("acme", requests_per_minute=2, daily_micros=1_000)]
    batch = [build_admission(prefix, f"d{i}", scope, cost_micros=100, tokens=1, now_ns=NOW_NS) for i in range(2)]
    assert all(v.admitted for v in await backend.admit(batch))
    again = await backend.admit(batch)
    assert all(v.admitted and v.replay for v in again)
    assert await backend.counter(batch[0].budgets[0].key) == 200


async def test_large_amounts_stay_exact(limits: tuple[Limits, str]) -> None:
    backend, prefix = limits
    cap = 10**15 + 7  # $1e9 in micro-dollars: past what a Lua number prints without an exponent
    scope = [Scope("acme", monthly_micros=cap)]
    big = build_admission(prefix, "big", scope, cost_micros=10**15, tokens=1, now_ns=NOW_NS)
    assert (await backend.admit([big]))[0].admitted
    assert await backend.settle("big", 10**15 + 3)
    assert await backend.counter(big.budgets[0].key) == 10**15 + 3


async def test_budget_refusals_say_why_and_when_to_retry(limits: tuple[Limits, str]) -> None:
    backend, prefix = limits
    scope = [Scope("acme", daily_micros=1_000)]

    def request(rid: str, cost: int) -> AdmissionRequest:
        return build_admission(prefix, rid, scope, cost_micros=cost, tokens=1, now_ns=NOW_NS)

    held = await backend.admit([request("a", 400), request("b", 400), request("c", 400)])
    assert [v.admitted for v in held] == [True, True, False]
    # 800 reserved, nothing spent: the room comes back as "a" and "b" settle, so retry soon, not at midnight
    assert held[2].reason == "in_flight" and held[2].retry_after_s == IN_FLIGHT_RETRY_S
    day_key = request("x", 0).budgets[0].key
    assert await backend.counter(day_key + HELD_SUFFIX) == 800
    assert await backend.settle("a", 30) and await backend.release("b")
    assert await backend.counter(day_key) == 30 and await backend.counter(day_key + HELD_SUFFIX) == 0
    assert (await backend.admit([request("c", 400)]))[0].admitted
    assert await backend.settle("c", 700)  # actual above the estimate: 730 spent
    (spent,) = await backend.admit([request("d", 400)])
    assert spent.reason == "spent" and spent.retry_after_s == pytest.approx(16 * 3600 + 53 * 60 + 20)  # to midnight
    (huge,) = await backend.admit([request("e", 1_001)])
    assert not huge.admitted and huge.reason == "too_large" and huge.retry_after_s is None
