"""Reading topics in tests: poll until a condition holds or a timeout passes (no sleeps as synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from streams.runtime.connections import kafka_security
from streams.settings import Settings


async def read_until(settings: Settings, topic: str, done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
                     timeout_s: float = 30.0) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers,
                                **kafka_security(settings, "admin"),
                                group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(records) and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def produce_raw(settings: Settings, topic: str, values: list[bytes | None]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True,
                                **kafka_security(settings, "admin"))
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=b"raw") for value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
