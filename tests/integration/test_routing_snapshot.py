"""The learning router's snapshot on the real broker: learn, stop, restart — the restored router decides as before
the restart and read only the tail past the snapshot; a corrupt snapshot costs a full rebuild, nothing else."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from aiokafka import AIOKafkaProducer

from schemas.envelope import Evaluation, RouteRecord, Status
from schemas.ledger import OutcomeEvent
from schemas.response import Response
from streams.followers.routing import RebuildStats, follow_outcomes
from streams.runtime.codec import encode
from streams.runtime.connections import kafka_security
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from streams.testing import seal_response
from tests.integration.test_ledger_kill import produce
from workers.routing.features import extract
from workers.routing.online import OnlineDecision, OnlineRouter, task_kind
from workers.routing.snapshot import MANIFEST_KEY

pytestmark = pytest.mark.integration

PROMPTS = ["capital of Peru?", "hello there", "Summarise this paragraph in one line: the cat sat on the mat.",
           "Write a Python function that parses ISO dates and handle time zones.",
           "Prove that there are infinitely many primes of the form 4k+3, and derive a bound.",
           "Plan a migration of a 252-table database with zero downtime; list steps, risks, rollback."]
TENANTS = ("acme", "globex")


def routed(rng: random.Random, rid: str, tenant: str, task: str | None) -> Response:
    f = extract(rng.choice(PROMPTS))
    record = RouteRecord(kind=task_kind(f), features=list(f.values), tier=rng.choice(["small", "medium"]))
    evaluation = None if task else Evaluation(grounded=rng.random() < 0.7)
    return seal_response(Response(request_id=rid, tenant=tenant, status=Status.OK, model="nano-us", task_id=task,
                                  route=record, evaluation=evaluation))


async def outcomes(settings: Settings, events: list[OutcomeEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"),
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topology(settings).outcomes, encode(e), key=e.task_id.encode())
                   for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def decisions(router: OnlineRouter) -> list[OnlineDecision]:
    return [router.decide(extract(p), t, f"q{i}") for i, p in enumerate(PROMPTS * 4) for t in TENANTS]


async def until(router: OnlineRouter, total: int) -> None:
    deadline = time.monotonic() + 30
    while sum(router.observations(t) for t in TENANTS) < total:
        assert time.monotonic() < deadline, "the follower did not learn the tail"
        await asyncio.sleep(0.1)


async def test_a_restart_restores_the_snapshot_and_reads_only_the_tail(settings: Settings) -> None:
    # One partition per topic: the live follower and the restart's replay then see the tail in the same order (the
    # learner is order-sensitive: λ's path and the refit points follow it; across partitions the interleaving of a
    # fetched batch is the broker's, for a live follower and a full rebuild alike).
    settings = settings.model_copy(update={"router_snapshot_every": 100, "partitions": 1})
    await ensure_topics(settings)
    rng = random.Random(5)
    n = 300
    history = [routed(rng, f"r{i}", TENANTS[i % 2], f"t{i}") for i in range(n)]
    await produce(settings, history)
    await outcomes(settings, [OutcomeEvent(tenant=TENANTS[i % 2], task_id=f"t{i}",
                                           outcome="failed" if rng.random() < 0.3 else "resolved",
                                           at_ns=time.time_ns()) for i in range(n - 20)])  # 20 tasks stay open
    first = RebuildStats()
    async with follow_outcomes(settings, OnlineRouter(), role="stage-model", stats=first) as router:
        assert first.snapshot_round is None and first.records_read == 2 * n - 20  # a full rebuild…
        learnt = sum(router.observations(t) for t in TENANTS)
        # … then the tail: 30 responses judged by the evaluators, and the 20 open tasks' outcomes (joined with
        # responses the snapshot holds as pending).
        await produce(settings, [routed(rng, f"s{i}", TENANTS[i % 2], None) for i in range(30)])
        await until(router, learnt + 30)
        await outcomes(settings, [OutcomeEvent(tenant=TENANTS[i % 2], task_id=f"t{i}", outcome="failed",
                                               at_ns=time.time_ns()) for i in range(n - 20, n)])
        await until(router, learnt + 50)
        before = decisions(router)
    assert first.snapshots_written == 1  # written at the end of the catch-up (≥ 100 observations)

    again = RebuildStats()
    async with follow_outcomes(settings, OnlineRouter(), role="stage-model", stats=again) as restored:
        assert again.snapshot_round == 1 and again.records_read == 50  # only the tail past the snapshot
        assert again.start_offsets is not None
        assert sum(again.start_offsets["responses"].values()) == n
        assert sum(again.start_offsets["outcomes"].values()) == n - 20
        assert decisions(restored) == before

    # A corrupt manifest: ignored (logged), the state rebuilt from the beginning, the same decisions.
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"))
    await producer.start()
    try:
        await producer.send_and_wait(topology(settings).routing_snapshots, b"{not a snapshot",
                                     key=MANIFEST_KEY.encode())
    finally:
        await producer.stop()
    full = RebuildStats()
    async with follow_outcomes(settings.model_copy(update={"router_snapshot_every": 0}), OnlineRouter(),
                               role="stage-model", stats=full) as rebuilt:
        assert full.snapshot_round is None and full.records_read == 2 * n + 30
        assert decisions(rebuilt) == before
