"""RdKafkaConsumer's own logic without a broker: an in-memory stand-in for librdkafka's consumer handle (what it
delivers, pauses and commits) under the consumer the stage runtime uses. The real handle against the real broker:
tests/integration/test_rdkafka.py."""

from __future__ import annotations

import random
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from streams.runtime import rdkafka
from streams.runtime.rdkafka import RdKafkaConsumer
from streams.settings import Settings


class FakeTopicPartition:
    def __init__(self, topic: str, partition: int, offset: int = -1001) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return f"{self._t}/{self._p}/{self._o}".encode()

    def value(self) -> bytes:
        return self.key()

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


class FakeHandle:
    """librdkafka's consumer as the adapter sees it: records of unpaused partitions in offset order; a paused
    partition delivers nothing and resumes from the position the application reached (librdkafka purges what it
    prefetched); commits are recorded with the thread that sent them."""

    def __init__(self, log: dict[tuple[str, int], int]) -> None:
        self.log = log  # records per partition
        self.next = {tp: 0 for tp in log}
        self.paused: set[tuple[str, int]] = set()
        self.commits: list[tuple[str, dict[tuple[str, int], int]]] = []
        self.on_assign: Any = None
        self.assigned = False

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def list_topics(self, *_: Any) -> None:
        return None

    def _deliver(self, n: int) -> list[FakeMessage]:
        if not self.assigned:
            self.assigned = True
            self.on_assign(self, [FakeTopicPartition(t, p) for t, p in self.log])
        out: list[FakeMessage] = []
        for tp in sorted(self.log):
            while len(out) < n and tp not in self.paused and self.next[tp] < self.log[tp]:
                out.append(FakeMessage(tp[0], tp[1], self.next[tp]))
                self.next[tp] += 1
        return out

    def poll(self, timeout: float) -> FakeMessage | None:
        got = self._deliver(1)
        return got[0] if got else None

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        return self._deliver(n)

    def pause(self, parts: list[FakeTopicPartition]) -> None:
        self.paused |= {(p.topic, p.partition) for p in parts}

    def resume(self, parts: list[FakeTopicPartition]) -> None:
        self.paused -= {(p.topic, p.partition) for p in parts}

    def get_watermark_offsets(self, p: FakeTopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, self.log[(p.topic, p.partition)]

    def position(self, parts: list[FakeTopicPartition]) -> list[FakeTopicPartition]:
        return [FakeTopicPartition(p.topic, p.partition, self.next[(p.topic, p.partition)]) for p in parts]

    def commit(self, offsets: list[FakeTopicPartition], asynchronous: bool) -> None:
        self.commits.append((threading.current_thread().name, {(o.topic, o.partition): o.offset for o in offsets}))

    def close(self) -> None:
        return None


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeHandle]]:
    made: dict[str, FakeHandle] = {}
    log = {("work", 0): 30, ("work", 1): 5, ("work.batch", 0): 40, ("work.batch", 1): 0}

    def consumer(conf: dict[str, Any]) -> FakeHandle:
        made["handle"] = FakeHandle(dict(log))
        return made["handle"]

    module = types.SimpleNamespace(Consumer=consumer, TopicPartition=FakeTopicPartition, KafkaException=RuntimeError)
    monkeypatch.setattr(rdkafka, "confluent_kafka", module)
    yield made


async def _consumer(max_records: int = 8) -> RdKafkaConsumer:
    no_credentials = Settings(kafka_credentials_file=Path("/nonexistent/kafka.json"))  # no broker here: none needed
    consumer = RdKafkaConsumer(no_credentials, "work", "work.batch", role="stage-x", group_id="g", client_id="c",
                               max_records=max_records)
    await consumer.start()
    return consumer


@pytest.mark.parametrize("batch", [8, 3, 1])  # 1: TOLLWAY_BATCH_MAX_RECORDS=1 (tests/chaos test_slow_stage_backlog)
async def test_lanes_are_taken_apart_and_every_record_comes_once_in_order(fake_module: dict[str, FakeHandle],
                                                                          batch: int) -> None:
    consumer = await _consumer(max_records=batch)
    handle = fake_module["handle"]
    rng = random.Random(7)
    taken: dict[TopicPartition, list[int]] = {}
    for _ in range(200):
        assigned = sorted(consumer.assignment()) or [TopicPartition("work", 0)]
        subset = rng.sample(assigned, rng.randint(1, len(assigned))) if rng.random() < 0.6 else []
        if rng.random() < 0.2:
            consumer.pause(*rng.sample(assigned, 1))
        if rng.random() < 0.3:
            consumer.resume(*assigned)
        batches = await consumer.getmany(*subset, timeout_ms=rng.choice([0, 5]), max_records=rng.randint(1, batch))
        assert sum(len(r) for r in batches.values()) <= batch
        for tp, records in batches.items():
            assert not subset or tp in subset
            assert tp not in consumer.paused()
            taken.setdefault(tp, []).extend(r.offset for r in records)
            assert await consumer.position(tp) == records[-1].offset + 1
        # Never more kept by the adapter than a batch and a fetch's worth per partition.
        assert all(len(kept) <= 2 * batch for kept in consumer._kept.values())
    consumer.resume(*consumer.assignment())
    while batches := await consumer.getmany(timeout_ms=0):
        for tp, records in batches.items():
            taken.setdefault(tp, []).extend(r.offset for r in records)
    assert {(tp.topic, tp.partition): offsets for tp, offsets in taken.items()} == \
        {tp: list(range(n)) for tp, n in handle.log.items() if n}
    assert consumer.highwater(TopicPartition("work", 0)) == 30


async def test_a_partition_kept_past_a_batch_is_held_in_librdkafka_until_taken(
        fake_module: dict[str, FakeHandle]) -> None:
    consumer = await _consumer(max_records=8)
    handle = fake_module["handle"]
    for _ in range(4):  # only work/1 asked for: what else librdkafka delivers is kept
        await consumer.getmany(TopicPartition("work", 1), timeout_ms=0)
    assert ("work", 0) in handle.paused and ("work.batch", 0) in handle.paused  # 8 kept each: held
    consumer.pause(TopicPartition("work", 0))  # the caller's pause of a held partition ...
    consumer.resume(TopicPartition("work", 0))  # ... and resume: still held until its records are taken
    assert ("work", 0) in handle.paused
    batches = await consumer.getmany(TopicPartition("work", 0), timeout_ms=0)
    assert [r.offset for r in batches[TopicPartition("work", 0)]] == list(range(8))
    assert ("work", 0) not in handle.paused  # drained: fetched again, from offset 8
    batches = await consumer.getmany(TopicPartition("work", 0), timeout_ms=0)
    assert batches[TopicPartition("work", 0)][0].offset == 8


async def test_a_consumer_of_one_record_per_batch_resumes_each_partition_it_drained(
        fake_module: dict[str, FakeHandle]) -> None:
    """With a batch of one record, a partition is held as soon as one record is kept — and fetched again once that
    record is taken (it used to stay paused for good: a model stage with TOLLWAY_BATCH_MAX_RECORDS=1 stopped after one
    record per partition)."""
    consumer = await _consumer(max_records=1)
    handle = fake_module["handle"]
    taken = 0
    while batches := await consumer.getmany(timeout_ms=5):
        taken += sum(len(records) for records in batches.values())
    assert taken == sum(handle.log.values())
    assert not handle.paused


async def test_commits_leave_on_the_consumers_thread_and_the_last_one_at_close(
        fake_module: dict[str, FakeHandle]) -> None:
    consumer = await _consumer()
    handle = fake_module["handle"]
    await consumer.commit({TopicPartition("work", 0): 3})
    await consumer.commit({TopicPartition("work", 0): 5, TopicPartition("work", 1): 1})
    assert handle.commits == []  # never from the event loop while the consumer's thread may be waiting in poll
    await consumer.getmany(timeout_ms=5)  # the thread's next wait sends them, newest offsets only
    assert len(handle.commits) == 1
    thread, offsets = handle.commits[0]
    assert thread.startswith("rdkafka-g") and offsets == {("work", 0): 5, ("work", 1): 1}
    await consumer.commit({TopicPartition("work", 0): 9})
    await consumer.stop()
    assert handle.commits[-1][1] == {("work", 0): 9}


async def test_revoked_partitions_drop_what_was_kept_for_them(fake_module: dict[str, FakeHandle]) -> None:
    consumer = await _consumer()
    handle = fake_module["handle"]
    await consumer.getmany(TopicPartition("work", 1), timeout_ms=0)
    assert consumer._kept.get(TopicPartition("work", 0))
    await consumer.commit({TopicPartition("work", 1): 2})
    consumer._on_revoke(handle, [])  # on the consumer's thread, inside poll: what is kept for commit goes first
    assert handle.commits[-1][1] == {("work", 1): 2}
    consumer._on_assign(handle, [FakeTopicPartition("work", 1)])
    assert await consumer.getmany(TopicPartition("work", 0), timeout_ms=0) == {}
    assert TopicPartition("work", 0) not in consumer._kept
