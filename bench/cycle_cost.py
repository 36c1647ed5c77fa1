"""The fixed cost of a co-located chain's cycle: what a one-request cycle pays at ordinary rates, in process.

At 25–50 req/s a cycle of ``tollway worker all+`` carries a request or two, and pays every member's per-batch work,
the hand-overs, the metrics and the producer alone. This harness feeds a long-lived chain (the interactive route,
real stages on their in-memory backends, a fake producer, an in-memory replay memory) ``--batch`` requests per cycle
and reports, per cycle:

* process CPU (``time.process_time_ns``), the minimum over ``--repeat`` runs of ``--cycles`` cycles, and each
  member's share (its ``handle``, timed around the call);
* counts: members' ``handle`` calls, produce batches (one per topic-partition sent) and sends (a send ships what is
  pending at once: what aiokafka turns into a produce request per broker), and the calls to backends that are one
  Redis round trip each in production (cache lookup and fill, claims, admissions, settlements, session memory,
  replay claims) — counted on the in-memory stand-ins through a counting proxy.

    python -m bench.cycle_cost [--batch 1] [--cycles 300] [--repeat 5] [--profile tottime] [--json]

A base tree (``git archive <commit>``) run from its own directory gives the before figure; alternate the two.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import inspect
import json
import os
import pstats
import time
from collections import Counter
from typing import Any

from bench.load import request
from bench.micro import FakeProducer, _tp, records
from schemas.envelope import DEFAULT_ROUTE as STAGES
from streams.runtime.chain import ChainPublisher, ChainRunner, member_topics
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.replays import MemoryReplayMemory
from streams.runtime.runner import StageRunner
from streams.runtime.topics import Topology
from streams.settings import Settings
from streams.stages import registry
from workers.context import StageContext, SystemClock

# In-memory stand-ins whose Redis twin makes one round trip per call of these methods.
_ROUND_TRIPS = {"get_and_read_logs", "get", "put", "claim", "admit", "settle_many", "settle", "release",
                "recent_turns_many", "append_turns_many"}


class Counted:
    """Counts the awaited calls of ``inner``'s coroutine methods named in :data:`_ROUND_TRIPS`."""

    def __init__(self, inner: Any, name: str, counts: Counter[str]) -> None:
        self._inner, self._name, self._counts = inner, name, counts

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if attr in _ROUND_TRIPS and inspect.iscoroutinefunction(value):
            async def counted(*args: Any, **kwargs: Any) -> Any:
                self._counts[f"{self._name}.{attr}"] += 1
                return await value(*args, **kwargs)
            return counted
        return value


class CountingProducer(FakeProducer):
    """The fake producer, counting batches."""

    batches: int = 0

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.batches += 1
        return await super().send_batch(batch, topic, partition=partition)


def _count_backends(ctx: Any, stage: str, counts: Counter[str]) -> Any:
    changes = {f.name: Counted(getattr(ctx, f.name), f"{stage}.{f.name}", counts) for f in dataclasses.fields(ctx)
               if type(getattr(ctx, f.name)).__name__.startswith("Memory") and f.name != "publisher"}
    return dataclasses.replace(ctx, **changes) if changes else ctx


async def measure(batch: int, cycles: int, repeat: int, profile: str | None) -> dict[str, Any]:
    settings = Settings(topic_prefix="micro", worker_id="bench-cycle")
    topo = Topology(settings.topic_prefix)
    specs = [registry.stage(s) for s in STAGES]
    counts: Counter[str] = Counter()
    producer = CountingProducer()
    kafka = KafkaPublisher(producer)
    shared = ChainPublisher(kafka, member_topics(specs, topo))
    replays = Counted(MemoryReplayMemory(), "runner.replays", counts)
    members: list[StageRunner[Any]] = []
    for spec in specs:
        base = StageContext(stage=spec.name, worker_id=settings.worker_id, clock=SystemClock(), publisher=shared,
                            topic_prefix=settings.topic_prefix)
        ctx = _count_backends(spec.memory_context(base), spec.name, counts)
        members.append(StageRunner(stage=spec, ctx=ctx, settings=settings, topology=topo, publisher=shared,
                                   clock=SystemClock(), replays=replays))  # type: ignore[arg-type]
    chain = ChainRunner(members, shared, kafka, settings, topo)
    member_ns: Counter[str] = Counter()
    for member in members:  # time each member's handle
        inner = member.handle

        async def timed(work: Any, inner: Any = inner, name: str = member.stage) -> Any:
            counts[f"handle.{name}"] += 1
            started = time.process_time_ns()
            try:
                return await inner(work)
            finally:
                member_ns[name] += time.process_time_ns() - started
        member.handle = timed  # type: ignore[method-assign]
    sends = 0
    inner_send = kafka._send

    async def counted_send() -> None:
        nonlocal sends
        if kafka.pending:
            sends += 1
        await inner_send()
    kafka._send = counted_send  # type: ignore[method-assign]

    warmup = 200
    reqs = [request("cycle", i) for i in range((warmup + cycles * repeat) * batch)]
    position = 0

    async def cycle() -> None:
        nonlocal position
        chunk = reqs[position:position + batch]
        position += batch
        polled = records("micro.ingress", [(rid.encode(), value) for rid, value in chunk])
        await chain.handle({_tp(polled[0].topic): polled})

    for _ in range(warmup):
        await cycle()
    best, best_members = 1 << 62, Counter[str]()
    per_cycle: dict[str, float] = {}
    for run in range(repeat):
        counts.clear()
        member_ns.clear()
        producer.batches = sends = 0
        prof = cProfile.Profile() if profile and run == repeat - 1 else None
        started = time.process_time_ns()
        if prof:
            prof.enable()
        for _ in range(cycles):
            await cycle()
        if prof:
            prof.disable()
        spent = time.process_time_ns() - started
        if spent < best:
            best, best_members = spent, Counter(member_ns)
        per_cycle = {"produce batches": producer.batches / cycles, "sends": sends / cycles,
                     **{name: n / cycles for name, n in sorted(counts.items())}}
        if prof:
            pstats.Stats(prof).sort_stats(profile).print_stats(35)
    return {"batch": batch, "cycles": cycles, "repeat": repeat, "loadavg": os.getloadavg(),
            "cpu_us_per_cycle": round(best / cycles / 1000, 1),
            "cpu_us_per_request": round(best / cycles / batch / 1000, 1),
            "member_us_per_cycle": {name: round(ns / cycles / 1000, 1) for name, ns in best_members.items()},
            "per_cycle": per_cycle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", default=None, help="cProfile the last repetition, sorted by this key")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure(args.batch, args.cycles, args.repeat, args.profile))
    if args.json:
        print(json.dumps(result))
        return
    print(f"batch {result['batch']}: {result['cpu_us_per_cycle']} µs CPU per cycle, "
          f"{result['cpu_us_per_request']} µs per request (min of {args.repeat} × {args.cycles} cycles; "
          f"load {', '.join(f'{x:.2f}' for x in result['loadavg'])})")
    print("  per member:", ", ".join(f"{k} {v}" for k, v in result["member_us_per_cycle"].items()))
    print("  per cycle:", ", ".join(f"{k} {v:g}" for k, v in result["per_cycle"].items()))


if __name__ == "__main__":
    main()
