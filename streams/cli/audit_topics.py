"""Reading the audit topics whole for `tollway audit verify --topic`: a reader of its own (no consumer group), from
the first offset to the end offsets seen when it starts."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from schemas.errors import ServiceUnavailable
from streams.runtime.connections import new_consumer, start
from streams.runtime.topics import topology
from streams.settings import Settings


async def read_audit_topics(settings: Settings, *, timeout_s: float = 300.0) -> tuple[list[bytes], list[bytes]]:
    """(checkpoint witness messages, audit records). The witness is read first: a checkpoint is published after the
    records it covers, so records read afterwards include every record the witness names."""
    topo = topology(settings)
    witness = await _read_all(settings, topo.audit_checkpoints, timeout_s)
    records = await _read_all(settings, topo.audit_log, timeout_s)
    return witness, records


async def _read_all(settings: Settings, topic: str, timeout_s: float) -> list[bytes]:
    consumer = new_consumer(settings, topic, role="auditor", auto_offset_reset="earliest")
    await start(consumer, settings, f"audit reader of {topic}")
    try:
        return await asyncio.wait_for(_drain(consumer), timeout_s)
    except (TimeoutError, KafkaError) as exc:
        raise ServiceUnavailable(f"reading {topic} failed: {exc!r}") from exc
    finally:
        await consumer.stop()


async def _drain(consumer: AIOKafkaConsumer) -> list[bytes]:
    for _ in range(50):  # a topic that does not exist gets no partitions: nothing to read
        if consumer.assignment():
            break
        await asyncio.sleep(0.1)
    partitions = sorted(consumer.assignment())
    if not partitions:
        return []
    await consumer.seek_to_beginning(*partitions)
    ends = await consumer.end_offsets(partitions)
    values: list[bytes] = []
    pending = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
    while pending:
        for tp, records in (await consumer.getmany(*pending, timeout_ms=1000)).items():
            values += [r.value for r in records if r.offset < ends[tp] and r.value is not None]
        pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
    return values
