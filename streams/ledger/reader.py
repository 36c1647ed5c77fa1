"""Reading a whole topic from the beginning without a consumer group: what the restart catch-up, the worker-less
ledger and the reconciliation scan.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from schemas.errors import BadEvent, ServiceUnavailable
from schemas.response import Response
from streams.runtime.codec import decode_as
from streams.runtime.connections import new_consumer
from streams.settings import Settings

Record = tuple[int, int, bytes | None, bytes | None, int]  # partition, offset, key, value, timestamp (ms)


async def iter_records(settings: Settings, topic: str, *, upto: dict[int, int] | None = None,
                       partitions: list[int] | None = None, timeout_s: float = 60.0,
                       role: str = "ledger") -> AsyncIterator[list[Record]]:
    """Every record of ``topic`` (or of ``partitions``) from the beginning, a fetch at a time, in offset order per
    partition: up to the end offsets at call time, or up to ``upto[partition]`` inclusive (a partition missing
    there: none).

    ``timeout_s`` bounds a wait without progress, not the whole read (a large topic takes as long as it takes).
    """
    # Large fetches: this reader is for whole-topic scans (reconcile, restart catch-up), not latency.
    consumer = new_consumer(settings, role=role, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise ServiceUnavailable(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    try:
        # Without a group, a subscription is assigned every partition once the metadata arrives; then only the
        # partitions asked for are assigned.
        consumer.subscribe([topic])
        for _ in range(int(timeout_s * 20)):  # aiokafka offers no event for "assigned" without a group
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        known = {tp.partition for tp in consumer.assignment()}
        consumer.unsubscribe()
        tps = [TopicPartition(topic, p) for p in sorted(known if partitions is None else set(partitions) & known)]
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        if upto is None:
            targets = {tp: end - 1 for tp, end in (await consumer.end_offsets(tps)).items()}
        else:
            targets = {tp: upto.get(tp.partition, -1) for tp in tps}
        pending = {tp for tp in tps if targets[tp] >= 0}
        for tp in set(tps) - pending:
            consumer.pause(tp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending:
            if loop.time() > deadline:
                raise ServiceUnavailable(f"reading {topic} did not reach offsets {targets}: no progress in "
                                         f"{timeout_s:.0f} s")
            for tp, records in (await consumer.getmany(*pending, timeout_ms=200, max_records=50_000)).items():
                deadline = loop.time() + timeout_s
                target = targets[tp]
                yield [(tp.partition, r.offset, r.key, r.value, r.timestamp) for r in records if r.offset <= target]
                if records and records[-1].offset >= target:
                    pending.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()


async def read_records(settings: Settings, topic: str, *, upto: dict[int, int] | None = None,
                       partitions: list[int] | None = None, timeout_s: float = 60.0,
                       role: str = "ledger") -> list[Record]:
    """Every record of ``topic`` in one list (see :func:`iter_records`; ``role``: the principal that may read it)."""
    out: list[Record] = []
    async for batch in iter_records(settings, topic, upto=upto, partitions=partitions, timeout_s=timeout_s,
                                    role=role):
        out.extend(batch)
    return out


async def read_topic(settings: Settings, topic: str, *, upto: dict[int, int] | None = None,
                     timeout_s: float = 60.0, role: str = "ledger") -> list[tuple[int, int, bytes | None]]:
    """Every record of ``topic`` as ``(partition, offset, value)`` (see :func:`read_records`)."""
    return [(p, o, value) for p, o, _key, value, _ts in await read_records(settings, topic, upto=upto,
                                                                           timeout_s=timeout_s, role=role)]


def decoded_responses(records: list[tuple[int, int, bytes | None]]) -> list[tuple[int, int, Response]]:
    out = []
    for partition, offset, value in records:
        try:
            out.append((partition, offset, decode_as(value, Response)))
        except BadEvent:
            continue  # the ledger agent skips the same records
    return out
