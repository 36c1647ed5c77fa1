"""librdkafka (confluent-kafka) on asyncio, behind the same publisher interface as aiokafka's
(``TOLLWAY_KAFKA_CLIENT=librdkafka``; issue 18 measured both with bench/kafka_client_bench.py).

:class:`RdKafkaProducer` — ``produce`` is a non-blocking C call made on the event loop (librdkafka's producer is
thread-safe); one thread runs ``poll`` and hands the delivery reports back to the loop in one
``call_soon_threadsafe`` per poll, not one per record. Idempotent, acks=all, linger from the settings, and keys go to
partitions by murmur2 as the Java client and aiokafka place them (librdkafka's own default, CRC32, would put a
request on other partitions than its aiokafka-produced neighbours).

:class:`RdKafkaPublisher` — the runner's ``BatchPublisher`` (``publish`` enqueues, ``flush`` returns once every
record is acknowledged) on that producer.

Security is every tollway client's: SASL/SCRAM (or PLAIN) credentials of the role from
:func:`streams.runtime.connections.kafka_security`, in librdkafka's names. confluent-kafka is an optional
dependency (``pip install -e '.[librdkafka]'``).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from typing import Any

from schemas.errors import ConfigError, ServiceUnavailable
from streams.settings import Settings

try:  # optional: only TOLLWAY_KAFKA_CLIENT=librdkafka needs it
    confluent_kafka: Any = importlib.import_module("confluent_kafka")
except ImportError:  # pragma: no cover - exercised only without the extra
    confluent_kafka = None


def rdkafka_config(settings: Settings, role: str) -> dict[str, Any]:
    """Address and security of ``role`` in librdkafka's configuration names."""
    from streams.runtime.connections import kafka_security

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
        if confluent_kafka is None:
            raise ConfigError("TOLLWAY_KAFKA_CLIENT=librdkafka needs confluent-kafka: pip install -e '.[librdkafka]'")
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
    """``publish`` enqueues; ``flush`` produces the batch and returns once every record is acknowledged."""

    def __init__(self, producer: RdKafkaProducer) -> None:
        self.producer = producer
        self.pending: list[tuple[str, bytes, bytes | None]] = []

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.pending.append((topic, value, key))

    async def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        deliveries = [self.producer.send(topic, value, key) for topic, value, key in pending]
        # An unacknowledged record never counts as published: every delivery is awaited.
        await asyncio.gather(*deliveries)


__all__ = ["RdKafkaProducer", "RdKafkaPublisher", "rdkafka_config"]
