"""The learning router's start-up with and without its state snapshot (issue 20), on the running broker.

Publishes ``--observations`` routed responses (each with a task) and their outcomes, spread over ``--tenants``
tenants, to a fresh topic prefix; then times three starts of :func:`streams.followers.routing.follow_outcomes`:
a full rebuild with snapshots off, a full rebuild that writes a snapshot round when it has caught up, and — after
``--tail`` more requests and their outcomes, learnt live by the second — a restart that restores the snapshot and
replays only the tail, and a full rebuild of the same history. The restored router must decide as the router it
replaces did before the restart (checked; a full rebuild may differ slightly: the order in which it interleaves the
partitions' outcomes moves λ and the refit points). Topics are deleted afterwards.

    python -m bench.routing_snapshot [--observations 20000] [--tenants 4] [--tail 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from schemas.envelope import RouteRecord, Status
from schemas.ledger import OutcomeEvent
from schemas.response import Response
from streams.followers.base import read_to_end
from streams.followers.routing import RebuildStats, follow_outcomes
from streams.runtime.codec import encode
from streams.runtime.connections import kafka_security
from streams.runtime.topics import delete_prefix_topics, ensure_topics, topology
from streams.settings import Settings
from streams.testing import seal_response
from workers.routing.features import extract
from workers.routing.online import OnlineRouter, task_kind

PROMPTS = ["capital of Peru?", "hello there", "Summarise this paragraph in one line: the cat sat on the mat.",
           "Write a Python function that parses ISO dates and handle time zones.",
           "Prove that there are infinitely many primes of the form 4k+3, and derive a bound.",
           "Plan a migration of a 252-table database with zero downtime; list steps, risks, rollback.",
           "What is 17 * 23?", "Translate 'good morning' to French."]


async def _publish(settings: Settings, start: int, count: int, tenants: int, rng: random.Random) -> None:
    features = [extract(p) for p in PROMPTS]
    topo = topology(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"),
                                enable_idempotence=True, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = []
        for i in range(start, start + count):
            f = rng.choice(features)
            tenant = f"tenant-{i % tenants}"
            record = RouteRecord(kind=task_kind(f), features=list(f.values), tier=rng.choice(["small", "medium"]))
            response = seal_response(Response(request_id=f"r{i}", tenant=tenant, status=Status.OK, model="nano-us",
                                              task_id=f"t{i}", route=record))
            futures.append(await producer.send(topo.responses, encode(response), key=response.request_id.encode()))
        await asyncio.gather(*futures)
        futures = []
        for i in range(start, start + count):
            event = OutcomeEvent(tenant=f"tenant-{i % tenants}", task_id=f"t{i}",
                                 outcome="failed" if rng.random() < 0.25 else "resolved", at_ns=time.time_ns())
            futures.append(await producer.send(topo.outcomes, encode(event), key=event.task_id.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _start(settings: Settings, probe: list[tuple[str, str]], *, tail: int = 0, tenants: int = 1,
                 at: int = 0) -> tuple[RebuildStats, list[Any]]:
    """Start a follower; with ``tail``, publish that many more requests and outcomes and wait until it learnt them."""
    stats = RebuildStats()
    async with follow_outcomes(settings, OnlineRouter(), role="stage-model", stats=stats) as router:
        if tail:
            learnt = sum(router.observations(f"tenant-{t}") for t in range(tenants))
            await _publish(settings, at, tail, tenants, random.Random(2))
            deadline = time.monotonic() + 60
            while sum(router.observations(f"tenant-{t}") for t in range(tenants)) < learnt + tail:
                assert time.monotonic() < deadline, "the follower did not learn the tail"
                await asyncio.sleep(0.1)
        decisions = [router.decide(extract(p), t, f"q{i}") for i, (p, t) in enumerate(probe)]
    return stats, decisions


async def run(observations: int, tenants: int, tail: int) -> dict[str, Any]:

    # One partition: the live follower and a replay then see the tail in the same order, so "the same decisions"
    # is a fair check (across partitions the interleaving of a batch is the broker's, and λ and the refit points
    # follow the order).
    base = Settings(topic_prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=1)
    await ensure_topics(base)
    try:
        rng = random.Random(1)
        await _publish(base, 0, observations, tenants, rng)
        probe = [(p, f"tenant-{t}") for p in PROMPTS for t in range(tenants)]
        off = base.model_copy(update={"router_snapshot_every": 0})
        full, _ = await _start(off, probe)
        # Learns the history, writes a snapshot round, then learns the tail live; its decisions are the reference.
        writing, before = await _start(base.model_copy(update={"router_snapshot_every": observations}), probe,
                                       tail=tail, tenants=tenants, at=observations)
        restored, after = await _start(base.model_copy(update={"router_snapshot_every": 10**9}), probe)
        rebuilt, _ = await _start(off, probe)
        records = await read_to_end(base, topology(base).routing_snapshots, role="admin", timeout_s=60,
                                    consumer_options={"max_partition_fetch_bytes": base.router_snapshot_max_bytes * 2})
        sizes = [len(r.value or b"") for r in records]
    finally:
        await delete_prefix_topics(base)

    def row(stats: RebuildStats) -> dict[str, Any]:
        return {"records_read": stats.records_read, "observations": stats.observations,
                "seconds": round(stats.seconds, 2), "snapshot_round": stats.snapshot_round}

    return {"observations": observations, "tenants": tenants, "tail": tail, "load_average": os.getloadavg(),
            "full_rebuild": row(full), "full_rebuild_writing_snapshot": row(writing),
            "restore_after_tail": row(restored), "full_rebuild_after_tail": row(rebuilt),
            "same_decisions": after == before, "snapshot_records": len(sizes), "snapshot_bytes": sum(sizes),
            "largest_snapshot_record": max(sizes, default=0),
            "speed_up": round(rebuilt.seconds / restored.seconds, 1) if restored.seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--tail", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.observations, args.tenants, args.tail))
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    print(f"{args.observations} observations over {args.tenants} tenants, tail {args.tail}; "
          f"load average {result['load_average'][0]:.2f}")
    for name in ("full_rebuild", "full_rebuild_writing_snapshot", "restore_after_tail", "full_rebuild_after_tail"):
        r = result[name]
        print(f"  {name:32s} {r['records_read']:>7} records  {r['observations']:>6} observations  "
              f"{r['seconds']:>6.2f} s  round {r['snapshot_round']}")
    print(f"  snapshot: {result['snapshot_records']} records, {result['snapshot_bytes']:,} bytes "
          f"(largest {result['largest_snapshot_record']:,}); same decisions as before the restart: "
          f"{result['same_decisions']}; restore {result['speed_up']}x faster than a full rebuild")


if __name__ == "__main__":
    main()
