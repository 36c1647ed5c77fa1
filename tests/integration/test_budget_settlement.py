"""Budgets on the real pipeline: the policy stage reserves an estimate, the audit stage settles the actual cost."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from schemas.envelope import Status
from schemas.policy import parse_policy
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.followers.policy import publish_policy
from streams.settings import Settings

MODELS = {"lite-us": {"region": "us", "input_micros_per_mtok": 150_000, "output_micros_per_mtok": 600_000}}


async def test_reservations_are_settled_at_the_actual_cost(pipeline: Settings) -> None:
    settings = pipeline
    doc = parse_policy({"version": "b1", "models": MODELS,
                        "tenants": {"acme": {"require_principal": False, "regions": ["us"],
                                             "allowed_models": ["lite-us"],
                                             "budgets": {"daily_micros": 50_000_000}}}})
    await publish_policy(settings, doc)
    async with TollwayClient(settings) as submitter:
        deadline = time.monotonic() + 15
        while True:  # the worker started before b1 was published: wait until it decides under b1
            (probe,) = await submitter.complete_envelopes([new_envelope("warm up", tenant="acme", settings=settings)])
            if "b1" in (probe.message or "") or probe.model == "lite-us" or time.monotonic() > deadline:
                break
        responses = await submitter.complete_envelopes([new_envelope(f"budget question {i}?", tenant="acme",
                                                           settings=settings) for i in range(3)])
    assert all(r.status is Status.OK for r in responses), responses
    spent = sum(r.cost_micros for r in (probe, *responses))
    assert spent > 0

    redis = Redis.from_url(settings.redis_url)
    try:
        keys = [k.decode() async for k in redis.scan_iter(match=f"{settings.topic_prefix}:budget:*acme*:day:*")
                if not k.endswith(b":held")]  # the reservations in flight have their own counter
        assert keys, "the policy stage reserved against the tenant's daily budget"
        deadline = time.monotonic() + 20
        counter = -1
        while time.monotonic() < deadline:  # the audit stage settles after the responses are out
            counter = int(await redis.get(keys[0]) or 0)
            if counter == spent:
                break
            await asyncio.sleep(0.1)
        assert counter == spent, f"budget counter {counter} != actual spend {spent}: a reservation was not settled"
    finally:
        await redis.aclose()
