"""Topics of a fresh prefix on the real broker: usable at once when ``ensure_topics`` returns."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import TopicPartition

from streams.runtime.connections import new_consumer, new_producer, start
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings


async def test_new_topics_serve_at_their_leaders_when_ensure_topics_returns(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    # The metadata named a leader before the broker served the partition: clients starting then logged
    # NotLeaderForPartition errors for a second or two on every fresh prefix (16–23 lines for four topics here).
    settings = settings.model_copy(update={"partitions": 4})
    created = await ensure_topics(settings)
    assert topology(settings).responses in created
    top = topology(settings)
    names = [top.responses, top.stage("policy"), top.stage("cache", "batch"), top.outcomes]
    partitions = [TopicPartition(name, p) for name in names for p in range(4)]
    caplog.set_level(logging.WARNING, logger="aiokafka")
    consumer = new_consumer(settings, *names, role="admin", group_id=None)
    producer = new_producer(settings, role="admin")
    await start(consumer, settings)
    await start(producer, settings)
    try:
        assert set((await consumer.end_offsets(partitions)).values()) == {0}
        await asyncio.gather(*(producer.send_and_wait(tp.topic, b"x", partition=tp.partition) for tp in partitions))
    finally:
        await consumer.stop()
        await producer.stop()
    not_leader = [r.getMessage() for r in caplog.records if "NotLeader" in r.getMessage()]
    assert not_leader == []
    assert await ensure_topics(settings) == []  # a second call creates nothing and does not wait
