"""The physical limit: a raw aiokafka relay through six topics, with no tollway code on the path.

Hop ``i`` consumes ``<prefix>.r{i-1}`` and produces to ``<prefix>.r{i}`` (``r0`` is the ingress, ``r6`` the end):
poll a batch → ``orjson.loads`` → append a hop stamp and pop the route → ``orjson.dumps`` → produce, keyed as it
came → await every delivery → commit. The Kafka side is the stage runner's own — the same consumer options, the same
idempotent producer, the same batched produce (``streams.runtime.runner``), the same partitions — so the ratio
of the pipeline
to this relay is what tollway's per-event work costs (validation, stamps, stage logic), and a transport improvement
lifts both.

    python -m bench.relay --hops 1-6        # every hop in this process
    python -m bench.relay --hops 3          # one hop per process (TOLLWAY_TOPIC_PREFIX names the topics)
    python -m bench.relay --client librdkafka   # the same hops on librdkafka (streams/runtime/rdkafka.py)

``--client`` (default ``$TOLLWAY_KAFKA_CLIENT`` or aiokafka) picks the Kafka client: issue 18 weighs librdkafka
against aiokafka on exactly this loop (bench/kafka_client_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.runtime.connections import kafka_security, new_consumer, new_producer
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.runner import OffsetCommitter, consumer_options
from streams.runtime.worker_process import tune_gc
from streams.settings import Settings, load_settings

HOPS = 6


def relay_topics(prefix: str, hops: int = HOPS) -> list[str]:
    return [f"{prefix}.r{i}" for i in range(hops + 1)]


async def ensure_relay_topics(settings: Settings, hops: int = HOPS) -> None:
    """The relay's topics, configured like tollway's stage topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **kafka_security(settings, "admin"),
                                request_timeout_ms=10_000)
    await admin.start()
    try:
        config = {"cleanup.policy": "delete", "retention.ms": str(24 * 3600 * 1000),
                  "max.message.bytes": str(settings.max_message_bytes * 2)}
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=dict(config))
                   for name in relay_topics(settings.topic_prefix, hops) if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


def relay_record(value: bytes | None, stage: str, worker_id: str, timestamp_ms: int, received_ns: int) -> bytes:
    """The relay's whole per-record work: decode, pop the route, append a hop stamp, encode."""
    env = orjson.loads(value or b"{}")
    if env.get("route"):
        env["route"].pop(0)
    env.setdefault("hops", []).append({
        "stage": stage, "worker_id": worker_id, "produced_at_ns": timestamp_ms * 1_000_000,
        "received_at_ns": received_ns, "started_at_ns": received_ns, "finished_at_ns": time.time_ns(),
        "batch_size": 1, "status": "ok",
    })
    return orjson.dumps(env)


async def floor_hop(settings: Settings, hop: int, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
    """The minimal chain's hop: one record at a time, ``send_and_wait`` per record (linger 0), commit after each
    — the simplest correct aiokafka consumer→producer loop, the floor a hop costs on this broker."""
    topics = relay_topics(settings.topic_prefix)
    source, sink, stage = topics[hop - 1], topics[hop], f"f{hop}"
    consumer = new_consumer(settings, source, role="admin", group_id=f"{settings.topic_prefix}.floor.{stage}",
                            client_id=f"{settings.worker_id}-floor-{stage}", **consumer_options(settings))
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=settings.batch_max_records)
            for tp, records in batches.items():
                for record in records:
                    value = relay_record(record.value, stage, settings.worker_id, record.timestamp, time.time_ns())
                    await producer.send_and_wait(sink, value, key=record.key)
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()


async def relay_hop(settings: Settings, hop: int, producer: AIOKafkaProducer, stop: asyncio.Event,
                    started: asyncio.Event | None = None) -> None:
    topics = relay_topics(settings.topic_prefix)
    source, sink, stage = topics[hop - 1], topics[hop], f"r{hop}"
    consumer = new_consumer(settings, source, role="admin", group_id=f"{settings.topic_prefix}.relay.{stage}",
                            client_id=f"{settings.worker_id}-relay-{stage}", **consumer_options(settings))
    publisher = KafkaPublisher(producer)
    committer = OffsetCommitter(consumer, stage)
    await consumer.start()
    if started is not None:
        started.set()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=settings.batch_max_records)
            if not batches:
                continue
            received_ns = time.time_ns()
            for records in batches.values():
                for record in records:
                    value = relay_record(record.value, stage, settings.worker_id, record.timestamp, received_ns)
                    publisher.publish(sink, value, key=record.key)
            await publisher.flush()
            await committer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
    finally:
        await committer.wait()
        await consumer.stop()


async def floor_hop_rd(settings: Settings, hop: int, producer: Any, stop: asyncio.Event) -> None:
    """:func:`floor_hop` on librdkafka: await each record's delivery, commit after each batch."""
    from bench.rdkafka_bridge import RdConsumer, next_offsets

    topics = relay_topics(settings.topic_prefix)
    source, sink, stage = topics[hop - 1], topics[hop], f"f{hop}"
    consumer = RdConsumer(settings, source, role="admin", group_id=f"{settings.topic_prefix}.floor.{stage}",
                          client_id=f"{settings.worker_id}-floor-{stage}", max_records=settings.batch_max_records)
    await consumer.start()
    commit = None
    try:
        while not stop.is_set():
            records = await consumer.cycle(commit)
            commit = None
            for record in records:
                value = relay_record(record.value(), stage, settings.worker_id, record.timestamp()[1],
                                     time.time_ns())
                await producer.send(sink, value, record.key())
            if records:
                commit = next_offsets(records)
    finally:
        await consumer.stop(commit)


async def relay_hop_rd(settings: Settings, hop: int, producer: Any, stop: asyncio.Event) -> None:
    """:func:`relay_hop` on librdkafka: a batch's records produced at once, every delivery awaited, then committed
    (the commit rides on the next poll, off the loop)."""
    from bench.rdkafka_bridge import RdConsumer, next_offsets

    topics = relay_topics(settings.topic_prefix)
    source, sink, stage = topics[hop - 1], topics[hop], f"r{hop}"
    consumer = RdConsumer(settings, source, role="admin", group_id=f"{settings.topic_prefix}.relay.{stage}",
                          client_id=f"{settings.worker_id}-relay-{stage}", max_records=settings.batch_max_records)
    await consumer.start()
    commit = None
    try:
        while not stop.is_set():
            records = await consumer.cycle(commit)
            commit = None
            if not records:
                continue
            received_ns = time.time_ns()
            deliveries = [producer.send(sink, relay_record(r.value(), stage, settings.worker_id, r.timestamp()[1],
                                                           received_ns), r.key()) for r in records]
            await asyncio.gather(*deliveries)
            commit = next_offsets(records)
    finally:
        await consumer.stop(commit)


async def run_relay(settings: Settings, hops: list[int], *, stop: asyncio.Event | None = None,
                    floor: bool = False, client: str = "aiokafka") -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    await ensure_relay_topics(settings)
    if client == "librdkafka":
        await _run_relay_rd(settings, hops, stop, floor=floor)
        return
    # One producer per process, shared by its hops, as run_workers does (the floor's sends one record at a time).
    producer = new_producer(settings, role="admin", linger_ms=0) if floor else new_producer(settings, role="admin")
    await producer.start()
    tune_gc()  # the same runtime tuning as a tollway worker
    try:
        tasks = [asyncio.create_task(floor_hop(settings, hop, producer, stop) if floor
                                     else relay_hop(settings, hop, producer, stop), name=f"relay-r{hop}")
                 for hop in hops]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.wait(tasks, timeout=10)
    finally:
        await producer.stop()


async def _run_relay_rd(settings: Settings, hops: list[int], stop: asyncio.Event, *, floor: bool) -> None:
    from streams.runtime.rdkafka import RdKafkaProducer

    producer = RdKafkaProducer(settings, role="admin", client_id=f"{settings.worker_id}-producer",
                               linger_ms=0 if floor else None)
    await producer.start()
    tune_gc()
    try:
        hop_of = floor_hop_rd if floor else relay_hop_rd
        tasks = [asyncio.create_task(hop_of(settings, hop, producer, stop), name=f"relay-r{hop}") for hop in hops]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.wait(tasks, timeout=10)
    finally:
        await producer.stop()


def parse_hops(text: str) -> list[int]:
    hops: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        hops.extend(range(int(lo), int(hi or lo) + 1))
    if not hops or min(hops) < 1 or max(hops) > HOPS:
        raise SystemExit(f"hops must be within 1-{HOPS}, got {text!r}")
    return hops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hops", default=f"1-{HOPS}", help="which hops this process runs, e.g. 1-6 or 3")
    parser.add_argument("--floor", action="store_true", help="the minimal chain: await each record's send")
    asked = os.environ.get("TOLLWAY_KAFKA_CLIENT", "")  # the floor is aiokafka's unless librdkafka is named
    parser.add_argument("--client", choices=("aiokafka", "librdkafka"),
                        default="librdkafka" if asked == "librdkafka" else "aiokafka")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run_relay(load_settings(), parse_hops(args.hops), floor=args.floor, client=args.client))


if __name__ == "__main__":
    main()
