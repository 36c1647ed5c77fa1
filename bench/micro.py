"""CPU per record through each hop, without the broker: what the end-to-end ratios are made of.

The same batch of records goes through (a) the relay's per-record work, (b) the stage runner with pass-through stage
functions — tollway's shell alone — and (c) the runner with each stage's real ``process`` on its in-memory backends.
A fake producer stands in for aiokafka (its own cost is the same for every system). Figures are process CPU time
(``time.process_time_ns``), the minimum over repetitions, so they hold on a busy shared machine where wall-clock
figures do not.

The "chain" section runs the whole interactive route as one co-located chain (``streams/runtime/chain.py``, what
``tollway worker all+`` runs) over the same batch, pass-through and real stages, with an in-memory replay memory:
CPU per request, the stable stand-in for bench.run's co-located CPU per request at saturation.

    python -m bench.micro [--batch 200] [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from bench.load import request
from bench.passthrough import passthrough_stages
from bench.relay import relay_record
from schemas.envelope import DEFAULT_ROUTE as STAGES  # the hops every request crosses (tools only on demand)
from streams.runtime.chain import ChainPublisher, ChainRunner, member_topics
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.replays import MemoryReplayMemory
from streams.runtime.runner import StageRunner
from streams.runtime.topics import Topology
from streams.runtime.worker_process import tune_gc
from streams.settings import Settings
from streams.stages import registry
from streams.testing import as_records
from workers import embedding
from workers.context import StageContext, SystemClock

Sent = tuple[str, bytes, bytes | None]


@dataclass
class _FakeBatch:
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    def append(self, *, key: bytes | None, value: bytes, timestamp: int | None) -> object:
        self.records.append((key, value))
        return True


class _FakeCluster:
    @staticmethod
    def partitions_for_topic(topic: str) -> set[int]:
        return {0, 1, 2, 3}


class _FakeClient:
    cluster = _FakeCluster()


@dataclass
class FakeProducer:
    """Records what would be sent; every delivery is already acknowledged."""

    sent: list[Sent] = field(default_factory=list)
    client: _FakeClient = field(default_factory=_FakeClient)

    def create_batch(self) -> _FakeBatch:
        return _FakeBatch()

    async def send_batch(self, batch: _FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.sent.extend((topic, value, key) for key, value in batch.records)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


records = as_records


async def runner_hop_ns(stage: str, inputs: list[ConsumerRecord[bytes, bytes]], settings: Settings, *,
                        real: bool, repeat: int) -> tuple[int, list[Sent]]:
    """Minimum CPU ns for one batch through the stage runner, and what it produced (for the next stage)."""
    topo = Topology(settings.topic_prefix)
    best, sent = 1 << 62, []
    # Embeddings memoised by earlier hops are this process's (a one-process worker has them too); this hop's own
    # are forgotten before each repetition, or every repetition after the first would find them.
    memos = {name: dict(memo.rows) for name, memo in embedding._MEMOS.items()}
    for _ in range(repeat):
        for name, memo in embedding._MEMOS.items():
            memo.rows = dict(memos.get(name, {}))
        producer = FakeProducer()
        publisher = KafkaPublisher(producer)
        base = StageContext(stage=stage, worker_id=settings.worker_id, clock=SystemClock(), publisher=publisher,
                            topic_prefix=settings.topic_prefix)
        spec = registry.stage(stage) if real else passthrough_stages([stage])[0]
        runner = StageRunner(stage=spec, ctx=spec.memory_context(base), settings=settings, topology=topo,
                             publisher=publisher, clock=SystemClock())
        batches = {_tp(inputs[0].topic): inputs}
        started = time.process_time_ns()
        await runner.handle(batches)
        best = min(best, time.process_time_ns() - started)
        sent = producer.sent
    return best, sent


async def chain_ns(inputs: list[ConsumerRecord[bytes, bytes]], settings: Settings, *, real: bool,
                   repeat: int, memos: dict[str, dict[str, Any]]) -> tuple[int, list[Sent]]:
    """Minimum CPU ns for one batch through the whole route as one co-located chain, and what it produced."""
    topo = Topology(settings.topic_prefix)
    specs = [registry.stage(s) for s in STAGES] if real else passthrough_stages(list(STAGES))
    best, sent = 1 << 62, []
    for _ in range(repeat):
        for name, memo in embedding._MEMOS.items():  # every request is new to the embedders, as at saturation
            memo.rows = dict(memos.get(name, {}))
        producer = FakeProducer()
        kafka = KafkaPublisher(producer)
        shared = ChainPublisher(kafka, member_topics(specs, topo))
        replays = MemoryReplayMemory()
        members = []
        for spec in specs:
            base = StageContext(stage=spec.name, worker_id=settings.worker_id, clock=SystemClock(), publisher=shared,
                                topic_prefix=settings.topic_prefix)
            members.append(StageRunner(stage=spec, ctx=spec.memory_context(base), settings=settings, topology=topo,
                                       publisher=shared, clock=SystemClock(), replays=replays))
        chain = ChainRunner(members, shared, kafka, settings, topo)
        batches = {_tp(inputs[0].topic): inputs}
        started = time.process_time_ns()
        await chain.handle(batches)
        best = min(best, time.process_time_ns() - started)
        sent = producer.sent
    return best, sent


def _tp(topic: str) -> Any:
    from aiokafka import TopicPartition

    return TopicPartition(topic, 0)


def relay_hop_ns(hop: int, inputs: list[ConsumerRecord[bytes, bytes]], repeat: int) -> tuple[int, list[bytes]]:
    best, out = 1 << 62, []
    for _ in range(repeat):
        started = time.process_time_ns()
        received_ns = time.time_ns()
        out = [relay_record(r.value, f"r{hop}", "bench", r.timestamp, received_ns) for r in inputs]
        best = min(best, time.process_time_ns() - started)
    return best, out


async def measure(batch: int = 200, repeat: int = 7) -> dict[str, Any]:
    settings = Settings(topic_prefix="micro", worker_id="bench-micro")
    ingress = [(rid.encode(), value) for rid, value in (request("micro", i) for i in range(batch))]
    result: dict[str, Any] = {"batch": batch, "repeat": repeat, "unit": "µs CPU per record", "hops": []}
    memos = {name: dict(memo.rows) for name, memo in embedding._MEMOS.items()}

    relay_inputs = records("micro.r0", ingress)
    totals = {"relay": 0.0, "runner": 0.0, "stages": 0.0}
    per_mode_inputs = {"runner": records("micro.ingress", ingress), "stages": records("micro.ingress", ingress)}
    for hop, stage in enumerate(STAGES, start=1):
        row: dict[str, Any] = {"hop": hop, "stage": stage}
        ns, relayed = relay_hop_ns(hop, relay_inputs, repeat)
        row["relay"] = round(ns / batch / 1000, 2)
        relay_inputs = records(f"micro.r{hop}", [(r.key, v) for r, v in zip(relay_inputs, relayed, strict=True)])
        for mode, real in (("runner", False), ("stages", True)):
            inputs = per_mode_inputs[mode]
            if not inputs:
                row[mode] = None
                continue
            try:
                ns, sent = await runner_hop_ns(stage, inputs, settings, real=real, repeat=repeat)
            except Exception as exc:  # a stage that cannot run on its in-memory backends: say so, keep going
                result.setdefault("errors", []).append(f"{mode} {stage}: {type(exc).__name__}: {exc}"[:300])
                row[mode], per_mode_inputs[mode] = None, []
                continue
            row[mode] = round(ns / len(inputs) / 1000, 2)
            forward = [(key, value) for topic, value, key in sent if topic.startswith(f"micro.{STAGES[hop]}")] \
                if hop < len(STAGES) else []
            per_mode_inputs[mode] = records(f"micro.{STAGES[hop]}" if hop < len(STAGES) else "", forward)
        for mode in totals:
            totals[mode] += row[mode] or 0.0
        result["hops"].append(row)
    incomplete = {mode for mode in totals if any(row[mode] is None for row in result["hops"])}
    result["total"] = {mode: None if mode in incomplete else round(value, 1) for mode, value in totals.items()}
    relay_total = totals["relay"] or 1.0
    result["ratio_to_relay"] = {mode: None if mode in incomplete else round(value / relay_total, 2)
                                for mode, value in totals.items()}
    result["chain"] = {}
    for mode, real in (("runner", False), ("stages", True)):
        try:
            ns, sent = await chain_ns(records("micro.ingress", ingress), settings, real=real, repeat=repeat,
                                      memos=memos)
        except Exception as exc:
            result.setdefault("errors", []).append(f"chain {mode}: {type(exc).__name__}: {exc}"[:300])
            result["chain"][mode] = None
            continue
        responses = sum(1 for topic, _value, _key in sent if topic == f"{settings.topic_prefix}.responses")
        if responses != batch:
            result.setdefault("errors", []).append(f"chain {mode}: {responses} responses for {batch} requests")
        result["chain"][mode] = round(ns / batch / 1000, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    # A worker tunes the cyclic collector once it has started (streams/runtime/worker_process.py); without the same
    # here, collections over the imported heap land at random in the hops measured (±30 % between identical runs).
    tune_gc()
    result = asyncio.run(measure(args.batch, args.repeat))
    if args.json:
        print(orjson.dumps(result).decode())
        return
    print(f"{'hop':<14}{'relay':>10}{'runner':>10}{'stages':>10}   ({result['unit']}, batch {args.batch})")
    for row in result["hops"]:
        print(f"{row['hop']} {row['stage']:<12}" + "".join(f"{row[m] if row[m] is not None else '-':>10}"
                                                         for m in ("relay", "runner", "stages")))
    print(f"{'total':<14}" + "".join(f"{result['total'][m]!s:>10}" for m in ("relay", "runner", "stages")))
    print(f"{'× relay':<14}" + "".join(f"{result['ratio_to_relay'][m]!s:>10}" for m in ("relay", "runner", "stages")))
    print(f"{'chain (all+)':<14}{'':>10}" + "".join(f"{result['chain'][m]!s:>10}" for m in ("runner", "stages"))
          + "   (the whole route co-located, per request)")
    for error in result.get("errors", []):
        print(f"error: {error}")


if __name__ == "__main__":
    main()
