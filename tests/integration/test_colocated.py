"""The whole route co-located as one consumer group, on the real broker: every request answered and audited once."""

from __future__ import annotations

import asyncio

import pytest

from schemas.envelope import DEFAULT_ROUTE, Status
from streams.clients.envelopes import new_envelope
from streams.clients.sdk import TollwayClient
from streams.runtime.topics import topology
from streams.runtime.worker_process import run_workers
from streams.settings import Settings
from streams.stages.registry import resolve_units
from tests.kafka_helpers import read_until

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
