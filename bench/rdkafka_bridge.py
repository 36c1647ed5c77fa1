"""The consumer half of the librdkafka client evaluated in issue 18 (bench/kafka_client_bench.py, the relay and the
floor chain); the producer half is the runtime's own, streams/runtime/rdkafka.py.

* :class:`RdConsumer`: every consumer call (commit, poll) runs on one thread of its own (the Python consumer is not
  to be used from two threads at once); ``cycle`` commits the previous batch's offsets (asynchronously, as
  aiokafka's runner does off the loop) and polls the next batch: it waits for the first record (librdkafka's
  ``consume(n, timeout)`` would wait for n records or the timeout — a latency floor) and then takes whatever is
  already fetched, up to ``max_records``.

Security is every tollway client's (streams/runtime/rdkafka.py: ``rdkafka_config``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, Message, TopicPartition

from streams.runtime.rdkafka import rdkafka_config
from streams.settings import Settings


class RdConsumer:
    def __init__(self, settings: Settings, *topics: str, role: str, group_id: str, client_id: str,
                 max_records: int) -> None:
        self.conf = {**rdkafka_config(settings, role), "group.id": group_id, "client.id": client_id,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "fetch.wait.max.ms": settings.batch_wait_ms, "fetch.min.bytes": 1,
                     "session.timeout.ms": 30_000, "enable.partition.eof": False,
                     "max.partition.fetch.bytes": settings.max_message_bytes * 2}
        self.topics = list(topics)
        self.max_records = max_records
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rdkafka-{group_id}")
        self.consumer: Consumer | None = None

    async def start(self) -> None:
        def open_() -> None:
            self.consumer = Consumer(self.conf)
            self.consumer.subscribe(self.topics)
        await asyncio.get_running_loop().run_in_executor(self._executor, open_)

    def _cycle(self, commit: list[TopicPartition] | None, timeout_s: float) -> list[Message]:
        assert self.consumer is not None
        if commit:
            self.consumer.commit(offsets=commit, asynchronous=True)
        first = self.consumer.poll(timeout_s)
        if first is None:
            return []
        batch = [first]
        if self.max_records > 1:
            batch.extend(self.consumer.consume(self.max_records - 1, 0))
        return [m for m in batch if m.error() is None]

    async def cycle(self, commit: list[TopicPartition] | None = None, timeout_s: float = 0.1) -> list[Message]:
        """Commit ``commit`` (asynchronously) and return the next batch (empty after ``timeout_s`` idle)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._cycle, commit, timeout_s)

    async def stop(self, commit: list[TopicPartition] | None = None) -> None:
        def close() -> None:
            if self.consumer is not None:
                if commit:
                    self.consumer.commit(offsets=commit, asynchronous=False)
                self.consumer.close()
        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


def next_offsets(messages: list[Message]) -> list[TopicPartition]:
    """The offsets to commit after ``messages``: one past the last record of each partition."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(m.topic(), m.partition())] = m.offset()
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
