"""Following a topic without a consumer group: the base of the policy store, the index materialiser and the reply
reader.

A follower assigns itself every partition of one topic (no group: no commits, no rebalances, any number of
followers), seeks to the beginning, the end or a timestamp, optionally reads up to the end offsets before
``start()`` returns (so a worker never decides on a stale or missing document), then tails the topic in the
background and hands each polled batch to ``apply``. What happens when a poll fails is the subclass's choice:
keep the state it has and retry (the default), or fail everyone waiting (``on_failure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from schemas.errors import ServiceUnavailable
from streams.runtime.connections import new_consumer, start
from streams.settings import Settings

log = logging.getLogger(__name__)

# How long a follower's fetch waits at the broker when its topic has nothing new. The broker answers as soon as a
# record arrives (fetch_min_bytes=1) and a follower takes every record of every partition it is handed, so no record
# ever waits for this: it only sets how often an idle follower asks again. A worker runs four or five followers
# (policy, index, routing, approvals) that are idle nearly all the time; at 100 ms (50 ms for approvals) they were ~50
# fetches a second, most of an idle `worker all+`'s CPU and a large part of the broker's (issue 18, session 6).
FOLLOWER_FETCH_WAIT_MS = 500

StartAt = Literal["beginning", "end"]


class TopicFollower(ABC):
    def __init__(self, settings: Settings, topic: str, *, role: str = "producer", start_at: StartAt = "beginning",
                 catch_up: bool = True, poll_ms: int = 500, max_records: int = 2000,
                 fetch_max_wait_ms: int = FOLLOWER_FETCH_WAIT_MS) -> None:
        self.settings = settings
        self.role = role  # the principal it reads as (streams/runtime/acls.py)
        self.topic = topic
        self.start_at = start_at
        self.catch_up = catch_up
        self.poll_ms = poll_ms
        self.max_records = max_records
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.partitions: list[TopicPartition] = []
        self.consumer_options: dict[str, Any] = {}  # passed to new_consumer (e.g. a larger fetch size)
        self.start_offsets: dict[int, int] = {}  # partition → where to start instead (past a snapshot)

    @abstractmethod
    async def apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Take one polled batch (records of all partitions, each partition in offset order)."""

    async def on_failure(self, exc: Exception) -> bool:
        """A poll failed: log it and go on (True), or stop following (False)."""
        log.error("following %s: poll failed, retrying in 1 s: %r", self.topic, exc)
        await asyncio.sleep(1.0)
        return True

    async def start(self, *, since_ms: int | None = None, timeout_s: float = 30.0) -> None:
        """Seek (``since_ms``: the first record at or after that time; ``start_offsets``: partition → offset, e.g.
        past what a snapshot covers), catch up if asked, then tail."""
        reset = "earliest" if self.start_at == "beginning" else "latest"
        consumer = new_consumer(self.settings, role=self.role, auto_offset_reset=reset,
                                fetch_max_wait_ms=self.fetch_max_wait_ms, **self.consumer_options)
        await start(consumer, self.settings, f"follower of {self.topic}")
        self._consumer = consumer
        try:
            self.partitions = await self._partitions(consumer)
            consumer.assign(self.partitions)
            if self.start_at == "beginning":
                await consumer.seek_to_beginning(*self.partitions)
            else:
                await consumer.seek_to_end(*self.partitions)
            if since_ms is not None:
                found = await consumer.offsets_for_times({tp: since_ms for tp in self.partitions})
                for tp, at in found.items():
                    if at is not None:
                        consumer.seek(tp, at.offset)
            for tp in self.partitions:
                if self.start_offsets.get(tp.partition):
                    consumer.seek(tp, self.start_offsets[tp.partition])
            for tp in self.partitions:  # resolve positions now: nothing published after start() is missed
                await consumer.position(tp)
            if self.catch_up:
                await self._catch_up(consumer, timeout_s)
        except BaseException:
            await consumer.stop()
            self._consumer = None
            raise
        self._task = asyncio.create_task(self._tail(), name=f"follow-{self.topic}")

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        # A topic created a moment ago takes a little while to show in the metadata; the consumer has no
        # subscription, so ask for the whole cluster's (aiokafka has no public call for one topic's partitions).
        for _ in range(100):
            cluster = await consumer._client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(self.topic)
            if partitions:
                return [TopicPartition(self.topic, p) for p in sorted(partitions)]
            await asyncio.sleep(0.05)
        raise ServiceUnavailable(f"topic {self.topic} has no partitions; run `tollway topics` first")

    async def _catch_up(self, consumer: AIOKafkaConsumer, timeout_s: float) -> None:
        end = await consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout_s
        while any([await consumer.position(tp) < end[tp] for tp in self.partitions]):
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"could not read {self.topic} to its end within {timeout_s:.0f} s")
            await self.poll(timeout_ms=200)

    async def poll(self, *, timeout_ms: int) -> int:
        assert self._consumer is not None, "start() first"
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records)
        records = [record for batch in batches.values() for record in batch]
        if records:
            await self.apply(records)
        return len(records)

    async def _tail(self) -> None:
        while True:
            try:
                await self.poll(timeout_ms=self.poll_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiokafka raises many types
                if not await self.on_failure(exc):
                    return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class _Snapshot(TopicFollower):
    def __init__(self, settings: Settings, topic: str, role: str) -> None:
        super().__init__(settings, topic, role=role, start_at="beginning", catch_up=True)
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    async def apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.records.extend(records)


async def read_to_end(settings: Settings, topic: str, *, role: str = "producer",
                      timeout_s: float = 60.0,
                      consumer_options: dict[str, Any] | None = None) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from its start to its end offsets as of now (CLI reports, reconciliation, the
    routing snapshots); ``consumer_options`` reach the consumer (e.g. a fetch size for large records)."""
    snapshot = _Snapshot(settings, topic, role)
    if consumer_options:
        snapshot.consumer_options = consumer_options
    await snapshot.start(timeout_s=timeout_s)
    await snapshot.stop()
    return snapshot.records
