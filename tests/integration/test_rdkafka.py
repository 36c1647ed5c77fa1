"""librdkafka (TOLLWAY_KAFKA_CLIENT=librdkafka) against the real broker: the publisher (SASL/SCRAM as the ``producer``
principal, every record acknowledged, keys on the partitions aiokafka would choose); the stage consumer (lanes taken
apart, every record once and in order through its own holding back, commits that a successor resumes from); the
whole route on it, lone stages and co-located; the HTTP ingress on it end to end; bad credentials fail at start."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2
from pydantic import SecretStr

from schemas.errors import ServiceUnavailable
from streams.ingress.server import serving
from streams.runtime.connections import new_consumer
from streams.runtime.rdkafka import RdKafkaConsumer, RdKafkaProducer, RdKafkaPublisher
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from tests.kafka_helpers import route_answers_and_audits

pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.integration


async def test_publishes_with_scram_on_the_partitions_aiokafka_chooses(settings: Settings) -> None:
    await ensure_topics(settings)
    topic = topology(settings).ingress()
    producer = RdKafkaProducer(settings, role="producer", client_id="test-rdkafka")
    await producer.start()
    publisher = RdKafkaPublisher(producer)
    keys = [f"req-{uuid.uuid4().hex}".encode() for _ in range(40)]
    try:
        for key in keys:
            publisher.publish(topic, b'{"n": 1}', key=key)
        await asyncio.wait_for(publisher.flush(), 30)
    finally:
        await producer.stop()
    consumer = new_consumer(settings, topic, role="admin", auto_offset_reset="earliest")
    await consumer.start()
    try:
        seen: dict[bytes, int] = {}
        deadline = time.monotonic() + 30
        while len(seen) < len(keys) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                seen.update({r.key: tp.partition for r in records if r.key is not None})
    finally:
        await consumer.stop()
    assert set(seen) == set(keys)
    # murmur2 over the sorted partitions: a request keeps its partition numbers from topic to topic and client to client
    assert all(seen[key] == (murmur2(key) & 0x7FFFFFFF) % settings.partitions for key in keys)


async def test_the_http_ingress_answers_on_librdkafka(pipeline: Settings) -> None:
    settings = pipeline.model_copy(update={"kafka_client": "librdkafka", "ingress_dev_mode": True})
    async with serving(settings, port=0, wait_ready_s=30) as (ingress, port), aiohttp.ClientSession() as http:
        assert ingress.gateway.ready
        body = {"model": "auto", "messages": [{"role": "user", "content": "What is the refund policy?"}]}
        replies = await asyncio.gather(*(http.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                   data=orjson.dumps(body), headers={"X-Tollway-Tenant": "acme"})
                                         for _ in range(5)))
        for reply in replies:
            assert reply.status == 200, await reply.text()
            assert (await reply.json())["choices"][0]["message"]["content"]


async def test_wrong_credentials_fail_at_start(settings: Settings) -> None:
    wrong = settings.model_copy(update={"kafka_username": "producer", "kafka_password": SecretStr("not-it")})
    producer = RdKafkaProducer(wrong, role="producer", client_id="test-rdkafka-wrong")
    with pytest.raises(ServiceUnavailable):
        await producer.start()
    await producer.stop()


async def _produce(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = RdKafkaProducer(settings, role="admin", client_id="test-rdkafka-feed")
    await producer.start()
    publisher = RdKafkaPublisher(producer)
    try:
        for topic, value in records:
            publisher.publish(topic, value, key=value)
        await asyncio.wait_for(publisher.flush(), 30)
    finally:
        await producer.stop()


async def _assigned(consumer: RdKafkaConsumer, n: int) -> None:
    """Polls (and drops what it polls) until the group assigned ``n`` partitions: before anything is produced."""
    deadline = time.monotonic() + 30
    while len(consumer.assignment()) < n:  # the first polls join the group
        assert time.monotonic() < deadline, "no assignment within 30 s"
        await consumer.getmany(timeout_ms=200)


async def test_the_stage_consumer_takes_lanes_apart_and_every_record_once_in_order(settings: Settings) -> None:
    await ensure_topics(settings)
    topo = topology(settings)
    interactive, batch = topo.stage_lanes("policy")
    consumer = RdKafkaConsumer(settings, interactive, batch, role="admin", group_id=f"{settings.topic_prefix}-lanes",
                               client_id="test-rdkafka-lanes", max_records=8)
    await consumer.start()
    seen: dict[TopicPartition, list[int]] = {}
    try:
        await _assigned(consumer, 2 * settings.partitions)
        await _produce(settings, [(batch, f"b{i}".encode()) for i in range(60)])
        interactive_tps = [tp for tp in consumer.assignment() if tp.topic == interactive]
        # Only the interactive lane asked for: nothing of the backfill waiting beside it comes back.
        assert not await consumer.getmany(*interactive_tps, timeout_ms=300)
        await _produce(settings, [(interactive, f"i{i}".encode()) for i in range(5)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(*interactive_tps, timeout_ms=500)).items():
                assert tp.topic == interactive
                got += [r.value for r in records]
                seen.setdefault(tp, []).extend(r.offset for r in records)
        assert sorted(got) == [f"i{i}".encode() for i in range(5)]
        # Paused: nothing of the batch lane, though it waits; resumed: all of it, each record once, in order.
        batch_tps = [tp for tp in consumer.assignment() if tp.topic == batch]
        consumer.pause(*batch_tps)
        assert set(consumer.paused()) == set(batch_tps)
        assert not await consumer.getmany(timeout_ms=300)
        consumer.resume(*batch_tps)
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < 60 and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            assert sum(len(r) for r in batches.values()) <= 8
            for tp, records in batches.items():
                values += [r.value for r in records]
                seen.setdefault(tp, []).extend(r.offset for r in records)
        assert sorted(values) == sorted(f"b{i}".encode() for i in range(60))
        for tp, offsets in seen.items():
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), tp
            assert await consumer.position(tp) == offsets[-1] + 1
            assert consumer.highwater(tp) == offsets[-1] + 1
        await consumer.commit({tp: offsets[-1] + 1 for tp, offsets in seen.items()})
    finally:
        await consumer.stop()
    # The group's next member starts where the commit left off: nothing again.
    successor = RdKafkaConsumer(settings, interactive, batch, role="admin", group_id=f"{settings.topic_prefix}-lanes",
                                client_id="test-rdkafka-lanes-2")
    await successor.start()
    try:
        await _assigned(successor, 2 * settings.partitions)
        await _produce(settings, [(batch, b"after")])
        values = []
        deadline = time.monotonic() + 30
        while not values and time.monotonic() < deadline:
            values = [r.value for records in (await successor.getmany(timeout_ms=500)).values() for r in records]
        assert values == [b"after"]
    finally:
        await successor.stop()


async def test_a_consumer_of_one_record_per_batch_reads_every_record(settings: Settings) -> None:
    """TOLLWAY_BATCH_MAX_RECORDS=1: each record kept holds its partition in librdkafka, and taking it fetches again."""
    await ensure_topics(settings)
    lane = topology(settings).stage_lanes("model")[0]
    consumer = RdKafkaConsumer(settings, lane, role="admin", group_id=f"{settings.topic_prefix}-one",
                               client_id="test-rdkafka-one", max_records=1)
    await consumer.start()
    try:
        await _assigned(consumer, settings.partitions)
        await _produce(settings, [(lane, f"r{i}".encode()) for i in range(40)])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < 40 and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            assert sum(len(r) for r in batches.values()) <= 1
            values += [r.value for records in batches.values() for r in records]
        assert sorted(values) == sorted(f"r{i}".encode() for i in range(40))
    finally:
        await consumer.stop()


@pytest.mark.parametrize("units", [["all"], ["all+"]])
async def test_the_route_runs_on_librdkafka(settings: Settings, units: list[str]) -> None:
    await route_answers_and_audits(settings.model_copy(update={"kafka_client": "librdkafka"}), units)
