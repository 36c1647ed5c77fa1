"""The whole route co-located as one consumer group, on the real broker: every request answered and audited once."""

from __future__ import annotations

import asyncio

import pytest

from schemas.envelope import DEFAULT_ROUTE, Status
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.codec import encode
from streams.runtime.topics import ensure_topics, topology
from streams.runtime.worker_process import run_workers
from streams.settings import Settings
from streams.stages.registry import resolve_units
from tests.kafka_helpers import produce_raw, read_until

pytestmark = pytest.mark.integration


async def test_a_colocated_route_answers_and_audits_every_request(settings: Settings) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_workers(settings, resolve_units(["all+"]), ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        envs = [new_envelope(f"question {i}?", tenant="acme", settings=settings) for i in range(20)]
        async with TollwayClient(settings) as client:
            responses = await client.complete_envelopes(envs, timeout_s=60)
        assert all(r.status is Status.OK for r in responses)
        assert [h.stage for h in responses[0].hops] == list(DEFAULT_ROUTE[:-1])
        audited = await read_until(settings, topology(settings).audit_log, lambda records: len(records) >= 20)
        assert len({r.key for r in audited}) == 20
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_requests_left_on_a_member_topic_are_worked_by_the_sweeps(settings: Settings) -> None:
    """A whole-route chain fetches its members' own topics in sweeps only (lanes.QuietPartitions): what an earlier
    layout left on them is worked by the sweep at start, and a record that lands there later by the next sweep."""
    quick = settings.model_copy(update={"chain_quiet_sweep_s": 2.0})
    await ensure_topics(quick)
    policy_topic = topology(quick).stage("policy")

    def after_retrieval(prompt: str) -> bytes:
        env = new_envelope(prompt, tenant="acme", settings=quick)
        env.route = [stage for stage in env.route if stage != "retrieval"]  # as a separate retrieval worker left it
        return encode(env)

    early, late = after_retrieval("left by an earlier layout?"), after_retrieval("arrived between two sweeps?")
    await produce_raw(quick, policy_topic, [early])
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_workers(quick, resolve_units(["all+"]), ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(2.5)  # past the first sweep's window: the policy topic is paused now
        await produce_raw(quick, policy_topic, [late])
        responses = await read_until(quick, topology(quick).responses, lambda records: len(records) >= 2,
                                     timeout_s=60)
        assert len(responses) == 2
        assert all(b'"status":"ok"' in (r.value or b"") for r in responses)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
