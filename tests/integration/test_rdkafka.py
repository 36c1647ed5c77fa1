"""The librdkafka publisher (TOLLWAY_KAFKA_CLIENT=librdkafka) against the real broker: SASL/SCRAM as the ``producer``
principal, every record acknowledged, keys on the partitions aiokafka would choose; the HTTP ingress on it end to
end; bad credentials fail at start."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import orjson
import pytest
from aiokafka.partitioner import murmur2
from pydantic import SecretStr

from schemas.errors import ServiceUnavailable
from streams.ingress.server import serving
from streams.runtime.connections import new_consumer
from streams.runtime.rdkafka import RdKafkaProducer, RdKafkaPublisher
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings

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
