"""librdkafka (confluent-kafka) on asyncio, behind the interfaces the runtime uses of aiokafka's clients
(``TOLLWAY_KAFKA_CLIENT=librdkafka``: the stage workers' consumers and producer, and the HTTP ingress's publisher;
issue 18 measured both clients with bench/kafka_client_bench.py).

:class:`RdKafkaProducer` — ``produce`` is a non-blocking C call made on the event loop (librdkafka's producer is
thread-safe); one thread runs ``poll`` and hands the delivery reports back to the loop in one
``call_soon_threadsafe`` per poll, not one per record. Idempotent, acks=all, linger from the settings, and keys go to
partitions by murmur2 as the Java client and aiokafka place them (librdkafka's own default, CRC32, would put a
request on other partitions than its aiokafka-produced neighbours).

:class:`RdKafkaPublisher` — the runner's ``BatchPublisher`` (``publish`` enqueues, ``flush`` returns once every
record is acknowledged) on that producer.


:class:`RdKafkaConsumer` — the stage runtime's consumer (:class:`streams.runtime.connections.StageConsumer`, the part of
aiokafka's ``AIOKafkaConsumer`` the runner, the lane poller and a chain use). librdkafka fetches on its own threads;
one thread of the consumer's waits for records (``poll``, the GIL released) when the loop has none in hand, and what
it returns is kept per partition, so ``getmany`` can take from some partitions only (the lanes) as aiokafka's does.
A partition whose kept records outgrow a batch is paused inside librdkafka until they are taken (librdkafka purges a
paused partition's prefetched records and fetches again from the position the application reached: nothing is lost
or read twice). Commits are sent asynchronously, in order (the runner commits only what is acknowledged); a failed
one is logged and its records are redelivered after a rebalance, as with aiokafka. With a static member
(``group.instance.id``) librdkafka never leaves the group on close, ``TOLLWAY_LEAVE_GROUP_ON_STOP`` notwithstanding.

Security is every tollway client's: SASL/SCRAM (or PLAIN) credentials of the role from
:func:`streams.runtime.connections.kafka_security`, in librdkafka's names. confluent-kafka is a dependency of
tollway; the import is guarded so an install without it still runs on aiokafka.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from schemas.errors import ConfigError, ServiceUnavailable
from streams.runtime.connections import Batches, kafka_security
from streams.settings import Settings

try:  # optional: only TOLLWAY_KAFKA_CLIENT=librdkafka needs it
    confluent_kafka: Any = importlib.import_module("confluent_kafka")
except ImportError:  # pragma: no cover - exercised only without the extra
    confluent_kafka = None

log = logging.getLogger(__name__)
_MISSING = ("the librdkafka Kafka client needs confluent-kafka (a dependency of tollway: reinstall it, or set "
            "TOLLWAY_KAFKA_CLIENT=aiokafka)")
_new = object.__new__


def rdkafka_config(settings: Settings, role: str) -> dict[str, Any]:
    """Address and security of ``role`` in librdkafka's configuration names (every librdkafka client of tollway
    starts from these: without confluent-kafka installed, this says how to mend it)."""
    if confluent_kafka is None:
        raise ConfigError(_MISSING)
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    security = kafka_security(settings, role)
    if security:
        conf.update({"security.protocol": security["security_protocol"],
                     "sasl.mechanisms": security["sasl_mechanism"],
                     "sasl.username": security["sasl_plain_username"],
                     "sasl.password": security["sasl_plain_password"]})
    return conf


class RdKafkaProducer:
    """An idempotent librdkafka producer whose deliveries resolve asyncio futures."""

    def __init__(self, settings: Settings, *, role: str, client_id: str, linger_ms: int | None = None) -> None:
        self.settings = settings
        self.conf = {**rdkafka_config(settings, role), "client.id": client_id, "enable.idempotence": True,
                     "acks": "all", "partitioner": "murmur2_random",
                     "linger.ms": settings.producer_linger_ms if linger_ms is None else linger_ms,
                     "message.max.bytes": settings.max_message_bytes * 2, "compression.type": "none"}
        self.producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[tuple[asyncio.Future[None], Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.producer = confluent_kafka.Producer(self.conf)
        # Fail at start, as aiokafka's start does, when the broker cannot be reached or refuses the credentials.
        try:
            await asyncio.to_thread(self.producer.list_topics, None, 15.0)
        except confluent_kafka.KafkaException as exc:
            raise ServiceUnavailable(f"Kafka is not reachable at {self.settings.bootstrap_servers}: {exc}") from exc
        self._thread = threading.Thread(target=self._poll_forever, name="rdkafka-producer-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        assert self._loop is not None
        while not self._stop.is_set():
            self.producer.poll(0.05)
            if self._reports:
                reports, self._reports = self._reports, []
                self._loop.call_soon_threadsafe(_resolve_all, reports)

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        """Enqueue one record; the future resolves on its acknowledgement (or fails with the broker's error)."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(err: Any, _msg: Any) -> None:  # inside poll(): the list the poll thread hands over next
            self._reports.append((future, err))

        try:
            self.producer.produce(topic, value, key, on_delivery=delivered)
        except BufferError:  # the local queue is full: serve deliveries, then retry once
            self.producer.poll(0)
            self.producer.produce(topic, value, key, on_delivery=delivered)
        return future

    async def stop(self) -> None:
        if self.producer is not None:
            await asyncio.to_thread(self.producer.flush, 10)
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)


def _resolve_all(reports: list[tuple[asyncio.Future[None], Any]]) -> None:
    for future, err in reports:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(confluent_kafka.KafkaException(err))


class RdKafkaPublisher:
    """``publish`` enqueues; ``send`` hands what is pending to librdkafka without waiting; ``flush`` sends and returns
    once every record sent is acknowledged (the same contract as :class:`streams.runtime.publisher.KafkaPublisher`)."""

    def __init__(self, producer: RdKafkaProducer) -> None:
        self.producer = producer
        self.pending: list[tuple[str, bytes, bytes | None]] = []
        self.sent: list[asyncio.Future[None]] = []

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.pending.append((topic, value, key))

    async def send(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        send = self.producer.send
        self.sent.extend(send(topic, value, key) for topic, value, key in pending)

    async def flush(self) -> None:
        await self.send()
        deliveries, self.sent = self.sent, []
        # An unacknowledged record never counts as published: every delivery is awaited.
        if deliveries:
            await asyncio.gather(*deliveries)


def _ctp(tp: TopicPartition, offset: int | None = None) -> Any:
    if offset is None:
        return confluent_kafka.TopicPartition(tp.topic, tp.partition)
    return confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)


class RdKafkaConsumer:
    """A group member on librdkafka with the consumer interface the stage runtime uses (module docstring)."""

    def __init__(self, settings: Settings, *topics: str, role: str, group_id: str, client_id: str,
                 group_instance_id: str | None = None, max_records: int | None = None) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.max_records = max_records or settings.batch_max_records
        self.conf: dict[str, Any] = {
            **rdkafka_config(settings, role), "group.id": group_id, "client.id": client_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False,
            # The broker answers a fetch at its first record; the wait only paces an idle consumer (consumer_options).
            "fetch.wait.max.ms": settings.batch_wait_ms, "fetch.min.bytes": 1,
            "session.timeout.ms": settings.session_timeout_ms,
            "max.partition.fetch.bytes": settings.max_message_bytes * 2,
            "on_commit": self._committed}
        if group_instance_id:
            self.conf["group.instance.id"] = group_instance_id
        self.consumer: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rdkafka-{group_id}")
        self._assigned: frozenset[TopicPartition] = frozenset()  # replaced whole by the rebalance callbacks
        self._kept: dict[TopicPartition, deque[ConsumerRecord[bytes, bytes]]] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()  # by the caller (lanes)
        self._held: set[TopicPartition] = set()  # by this consumer: more kept than a batch
        self._kept_for: frozenset[TopicPartition] = self._assigned  # the assignment the state above was pruned to
        self._last_poll_ms = 0
        self._commits: dict[TopicPartition, int] = {}  # to send from the consumer's thread (``commit``)
        self._commit_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        def open_() -> None:
            self.consumer = confluent_kafka.Consumer(self.conf)
            self.consumer.list_topics(None, 15.0)  # unreachable or refused: fail at start, as aiokafka's does
            self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_revoke)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, open_)
        except confluent_kafka.KafkaException as exc:
            raise ServiceUnavailable(f"Kafka is not reachable at {self.settings.bootstrap_servers}: {exc}") from exc

    async def stop(self) -> None:
        def close() -> None:
            if self.consumer is not None:
                self._send_commits(wait="at close")  # waited for: a closed consumer sends nothing more
                self.consumer.close()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        finally:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ the group (on the poll thread)
    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self._assigned = frozenset(TopicPartition(p.topic, p.partition) for p in partitions)

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        self._assigned = frozenset()  # eager protocol: everything is revoked, then the new set assigned
        # What is acknowledged and not yet committed is committed now, before the partitions move (their next owner
        # starts there instead of redelivering it); a failure only means that redelivery.
        self._send_commits(wait="before a rebalance")

    @staticmethod
    def _committed(err: Any, partitions: list[Any]) -> None:
        if err is not None:
            # The group rebalanced (or the coordinator moved) while the batch was worked: everything it produced
            # is acknowledged; the partitions' owner redelivers it and the audit and ledger deduplicate.
            log.warning("offsets not committed, their records will be redelivered: %s", err)

    # ------------------------------------------------------------------ what the runtime calls
    def assignment(self) -> frozenset[TopicPartition]:
        return self._assigned

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        new = [tp for tp in partitions if tp not in self._paused and tp in self._assigned]
        self._paused.update(new)
        fresh = [_ctp(tp) for tp in new if tp not in self._held]
        if fresh:
            self.consumer.pause(fresh)

    def resume(self, *partitions: TopicPartition) -> None:
        back = [tp for tp in partitions if tp in self._paused]
        self._paused.difference_update(back)
        fetch = [_ctp(tp) for tp in back if tp not in self._held]
        if fetch:
            self.consumer.resume(fetch)

    def highwater(self, tp: TopicPartition) -> int | None:
        try:
            _low, high = self.consumer.get_watermark_offsets(_ctp(tp), cached=True)
        except confluent_kafka.KafkaException:
            return None
        return int(high) if high is not None and high >= 0 else None

    async def position(self, tp: TopicPartition) -> int:
        known = self._positions.get(tp)
        if known is not None:
            return known
        [found] = self.consumer.position([_ctp(tp)])
        return int(found.offset)

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return self._last_poll_ms

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Kept for the consumer's thread, which sends it (asynchronously: librdkafka sends a member's commits in
        order; a failure is logged by ``on_commit``) before its next wait for records, or at close. Made from the
        event loop while that thread waits in ``poll``, librdkafka's commit blocked the loop for the whole wait
        (~500 ms, measured)."""
        if offsets:
            with self._commit_lock:
                self._commits.update(offsets)

    def _send_commits(self, *, wait: str = "") -> None:
        """What ``commit`` kept, sent on the consumer's thread (or the loop's, when that thread is not waiting):
        asynchronously, or — ``wait`` saying when, for the log — waited for, a failure logged (its records are
        redelivered)."""
        with self._commit_lock:
            offsets, self._commits = self._commits, {}
        if not offsets:
            return
        positions = [_ctp(tp, offset) for tp, offset in offsets.items()]
        if not wait:
            self.consumer.commit(offsets=positions, asynchronous=True)
            return
        try:
            self.consumer.commit(offsets=positions, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            log.warning("offsets not committed %s, their records will be redelivered: %s", wait, exc)

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> Batches:
        """Up to ``max_records`` kept or fetched records of ``partitions`` (all assigned ones if none are named),
        waiting up to ``timeout_ms`` for the first."""
        limit = max_records or self.max_records
        deadline = time.monotonic() + timeout_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            self._forget_revoked()
            wanted = (set(partitions) & self._assigned if partitions else set(self._assigned)) - self._paused
            taken = self._take(wanted, limit)
            if taken:
                return taken
            left = deadline - time.monotonic()
            if left <= 0:
                self._send_commits()
                self._keep(self.consumer.consume(limit, 0))  # what librdkafka holds already, without waiting
                return self._take(wanted, limit)
            self._keep(await loop.run_in_executor(self._executor, self._wait, limit, left))

    # ------------------------------------------------------------------ records kept between polls
    def _wait(self, limit: int, timeout_s: float) -> list[Any]:
        self._send_commits()
        first = self.consumer.poll(timeout_s)  # the first record ends the wait, as a fetch does
        if first is None:
            return []
        messages = [first]
        if limit > 1:
            messages.extend(self.consumer.consume(limit - 1, 0))
        return messages

    def _keep(self, messages: list[Any]) -> None:
        self._last_poll_ms = int(time.time() * 1000)
        if not messages:
            return
        assigned = self._assigned
        for message in messages:
            if message.error() is not None:
                log.warning("consumer: %s", message.error())
                continue
            tp = TopicPartition(message.topic(), message.partition())
            if tp not in assigned:
                continue  # revoked since the fetch: its new owner reads it
            key, value = message.key(), message.value()
            timestamp_type, timestamp = message.timestamp()
            record: ConsumerRecord[bytes, bytes] = _new(ConsumerRecord)
            record.__dict__ = {"topic": tp.topic, "partition": tp.partition, "offset": message.offset(),
                               "timestamp": timestamp, "timestamp_type": timestamp_type,
                               "key": key, "value": value, "checksum": None,
                               "serialized_key_size": len(key) if key else 0,
                               "serialized_value_size": len(value) if value else 0,
                               "headers": message.headers() or []}
            kept = self._kept.get(tp)
            if kept is None:
                kept = self._kept[tp] = deque()
            kept.append(record)
        full = [tp for tp, kept in self._kept.items() if len(kept) >= self.max_records and tp not in self._held]
        if full:
            self._held.update(full)
            self.consumer.pause([_ctp(tp) for tp in full if tp not in self._paused])

    def _take(self, wanted: set[TopicPartition], limit: int) -> Batches:
        taken: Batches = {}
        for tp in wanted:
            kept = self._kept.get(tp)
            if not kept:
                continue
            n = min(limit, len(kept))
            records = [kept.popleft() for _ in range(n)]
            taken[tp] = records
            self._positions[tp] = records[-1].offset + 1
            limit -= n
            # Fetched again once half a batch is left (none left, for a batch of one record: 1 // 2 is 0, and a
            # held partition with a one-record batch was never resumed).
            if tp in self._held and len(kept) < max(1, self.max_records // 2):
                self._held.discard(tp)
                if tp not in self._paused:
                    self.consumer.resume([_ctp(tp)])
            if limit <= 0:
                break
        return taken

    def _forget_revoked(self) -> None:
        assigned = self._assigned
        if assigned is self._kept_for:  # the callbacks replace the set whole: unchanged since the last pruning
            return
        self._kept_for = assigned
        for tp in [tp for tp in self._kept if tp not in assigned]:
            del self._kept[tp]
        for tp in [tp for tp in self._positions if tp not in assigned]:
            del self._positions[tp]
        self._paused &= assigned
        self._held &= assigned


__all__ = ["RdKafkaConsumer", "RdKafkaProducer", "RdKafkaPublisher", "rdkafka_config"]
