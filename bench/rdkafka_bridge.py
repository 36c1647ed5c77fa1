"""A librdkafka client (confluent-kafka) on asyncio through a thread bridge — the candidate of issue 18's transport
evaluation, measured beside aiokafka by bench/kafka_client_bench.py on the relay and the floor chain.

* :class:`RdProducer`: ``produce`` is a non-blocking C call from the event loop (librdkafka is thread-safe for
  producing); one thread runs ``poll`` and hands the delivery reports back to the loop in one
  ``call_soon_threadsafe`` per poll, not one per record.
* :class:`RdConsumer`: every consumer call (commit, poll) runs on one thread of its own (the Python consumer is not
  to be used from two threads at once); ``cycle`` commits the previous batch's offsets (asynchronously, as
  aiokafka's runner does off the loop) and polls the next batch: it waits for the first record (librdkafka's
  ``consume(n, timeout)`` would wait for n records or the timeout — a latency floor) and then takes whatever is
  already fetched, up to ``max_records``.

Security is the same as every tollway client's: SASL/SCRAM credentials from ``kafka_security`` (the role's password)
mapped to librdkafka's names.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.runtime.connections import kafka_security
from streams.settings import Settings


def rdkafka_common(settings: Settings, role: str) -> dict[str, Any]:
    """bootstrap and security in librdkafka's configuration names."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    security = kafka_security(settings, role)
    if security:
        conf.update({"security.protocol": security["security_protocol"],
                     "sasl.mechanisms": security["sasl_mechanism"],
                     "sasl.username": security["sasl_plain_username"],
                     "sasl.password": security["sasl_plain_password"]})
    return conf


class RdProducer:
    def __init__(self, settings: Settings, *, role: str, client_id: str, linger_ms: int | None = None) -> None:
        conf = {**rdkafka_common(settings, role), "client.id": client_id, "enable.idempotence": True, "acks": "all",
                "linger.ms": settings.producer_linger_ms if linger_ms is None else linger_ms,
                "message.max.bytes": settings.max_message_bytes * 2, "compression.type": "none"}
        self.producer = Producer(conf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="rdkafka-producer-poll", daemon=True)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def _poll_forever(self) -> None:
        assert self._loop is not None
        while not self._stop.is_set():
            self.producer.poll(0.05)
            if self._reports:
                reports, self._reports = self._reports, []
                self._loop.call_soon_threadsafe(_resolve_all, reports)

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             partition: int | None = None) -> asyncio.Future[None]:
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(err: KafkaError | None, _msg: Message) -> None:  # on the poll thread
            self._reports.append((future, err))

        if partition is None:
            self.producer.produce(topic, value, key, on_delivery=delivered)
        else:
            self.producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
        return future

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await self.send(topic, value, key)

    async def stop(self) -> None:
        await asyncio.to_thread(self.producer.flush, 10)
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 5)


def _resolve_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for future, err in reports:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(KafkaException(err))


class RdConsumer:
    def __init__(self, settings: Settings, *topics: str, role: str, group_id: str, client_id: str,
                 max_records: int) -> None:
        self.conf = {**rdkafka_common(settings, role), "group.id": group_id, "client.id": client_id,
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
