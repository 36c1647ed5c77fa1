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


async def route_answers_and_audits(settings: Settings, units: list[str], n: int = 20) -> None:
    """Run ``tollway worker <units…>`` in this process, send ``n`` requests: each answered ok through the default
    route and audited once."""
    from schemas.envelope import DEFAULT_ROUTE, Status
    from streams.clients.envelopes import new_envelope
    from streams.clients.sdk import TollwayClient
    from streams.runtime.topics import topology
    from streams.runtime.worker_process import run_workers
    from streams.stages.registry import resolve_units

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_workers(settings, resolve_units(units), ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        envs = [new_envelope(f"question {i}?", tenant="acme", settings=settings) for i in range(n)]
        async with TollwayClient(settings) as client:
            responses = await client.complete_envelopes(envs, timeout_s=60)
        assert all(r.status is Status.OK for r in responses)
        assert [h.stage for h in responses[0].hops] == list(DEFAULT_ROUTE[:-1])
        audited = await read_until(settings, topology(settings).audit_log, lambda records: len(records) >= n)
        assert len({r.key for r in audited}) == n
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
