"""Rate limits and budgets hold across worker processes: 2 processes, 500 concurrent requests, real Redis."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.envelope import Message
from schemas.policy import parse_policy
from streams.settings import Settings
from tests.integration.policy_load import run_worker
from workers.limits import RedisLimits
from workers.policy import estimate_cost_micros
from workers.routing.tokens import count_message_tokens

REQUESTS = 500
NOW_NS = 1_764_400_000_000_000_000  # pinned: 40 s into a minute, so no run straddles a window


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    client = aioredis.Redis.from_url(Settings().redis_url)
    prefix = f"tconc{uuid.uuid4().hex[:10]}"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def run_two_workers(doc: dict[str, Any], prefix: str) -> list[tuple[str, int]]:
    # fork: the children start with everything imported (spawn re-imports for seconds on a loaded machine); each
    # child runs its own event loop and Redis connections.
    forking = multiprocessing.get_context("fork")
    start, out = forking.Barrier(2), forking.Queue()
    ids = [f"req-{i:04d}" for i in range(REQUESTS)]
    procs = [forking.Process(target=run_worker, args=(doc, prefix, ids[w::2], NOW_NS, w, start, out))
             for w in range(2)]
    for p in procs:
        p.start()
    admitted: list[tuple[str, int]] = []
    for _ in procs:
        admitted += out.get(timeout=60)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return admitted


def base_doc(**acme: Any) -> dict[str, Any]:
    return {"version": "conc-1",
            "models": {"lite-us": {"region": "us", "input_micros_per_mtok": 150_000,
                                   "output_micros_per_mtok": 600_000}},
            "tenants": {"acme": {"require_principal": False, "allowed_models": ["lite-us"], **acme}}}


async def test_budget_overshoot_is_bounded_by_one_request(redis_prefix: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_prefix
    cap = 1_000_000
    doc = base_doc(budgets={"daily_micros": cap})
    prompt = [Message(role="user", content="How much is the annual plan?")]
    cost = estimate_cost_micros(parse_policy(doc), ["lite-us"], count_message_tokens(prompt), 256)  # 15 tokens
    room = int(37.5 * cost)  # nearly spent: room for 37 requests and a half
    day_key = f"{prefix}:budget:acme:day:20251129"
    await client.set(day_key, cap - room)

    admitted = run_two_workers(doc, prefix)

    assert len(admitted) == 37, "exactly as many as fit, across both processes"
    assert all(reserved == cost for _, reserved in admitted)
    spent = int(await client.get(day_key) or 0)
    assert spent <= cap, f"reservations exceed the cap: {spent} > {cap}"
    assert cap - spent < cost, "no room left for one more request"
    # settle every admitted request at its full estimate (the worst case): still within the cap
    limits = RedisLimits(client, prefix)
    assert all(await limits.settle_many([(rid, reserved) for rid, reserved in admitted]))
    assert int(await client.get(day_key) or 0) <= cap + cost


async def test_rpm_admits_exactly_the_limit_across_processes(redis_prefix: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_prefix
    admitted = run_two_workers(base_doc(rate_limits={"requests_per_minute": 100}), prefix)
    assert len(admitted) == 100
    assert len({rid for rid, _ in admitted}) == 100
    assert int(await client.get(f"{prefix}:rl:acme:rpm:{NOW_NS // 60_000_000_000}") or 0) == 100
