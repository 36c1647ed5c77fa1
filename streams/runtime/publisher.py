"""The Kafka publisher every stage process shares: records enqueued during a batch, sent and acknowledged in one flush.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

# murmur2 of recently produced keys: a request's key is hashed for every topic it is produced to (six stages, the
# response, the audit record), and aiokafka's murmur2 is pure Python.
_KEY_HASHES: dict[bytes, int] = {}
_KEY_HASHES_MAX = 50_000


def _key_hash(key: bytes) -> int:
    hashed = _KEY_HASHES.get(key)
    if hashed is None:
        if len(_KEY_HASHES) >= _KEY_HASHES_MAX:
            _KEY_HASHES.clear()
        hashed = _KEY_HASHES[key] = murmur2(key) & 0x7FFFFFFF
    return hashed


@dataclass
class KafkaPublisher:
    """Enqueues records on the shared producer; ``flush`` sends them and waits for every acknowledgement.

    The records of a flush go out as one batch per partition (``create_batch`` / ``send_batch``): no coroutine, no
    metadata wait and no delivery future per record, which is most of what ``send()`` costs. Keys map to partitions
    exactly as the producer's default partitioner maps them (murmur2 of the key over the sorted partitions), so a
    request stays on the same partition numbers from topic to topic.
    """

    producer: AIOKafkaProducer
    pending: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    # Sent by ``send`` and not yet awaited: ``flush`` awaits them with the rest.
    sent: list[asyncio.Future[object]] = field(default_factory=list)
    # One ``send`` at a time: a co-located chain's tail (the audit) flushes while the next cycle's members send, and a
    # flush must not take the acknowledgements to await before a send in progress has added its own.
    _sending: asyncio.Lock = field(default_factory=asyncio.Lock)

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        self.pending.append((topic, value, key))

    async def flush(self) -> None:
        await self.send()
        # An unacknowledged batch never commits: every delivery is awaited before the runner commits offsets.
        deliveries, self.sent = self.sent, []
        if deliveries:
            await asyncio.gather(*deliveries)

    async def send(self) -> None:
        """Ship what is pending now without waiting for its acknowledgements (``flush`` waits for them). A
        co-located chain sends each member's output as the member finishes, so a response leaves before the
        members after it (the audit's fsync) have run (streams/runtime/chain.py)."""
        if not self.pending and not self._sending.locked():
            return
        async with self._sending:
            await self._send()

    async def _send(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        partitions: dict[str, list[int]] = {}
        builders: dict[tuple[str, int], BatchBuilder] = {}
        deliveries = self.sent
        for topic, value, key in pending:
            ids = partitions.get(topic)
            if ids is None:
                ids = partitions[topic] = await self._partitions(topic)
            partition = ids[_key_hash(key) % len(ids)] if key is not None else random.choice(ids)
            builder = builders.get((topic, partition))
            if builder is None:
                builder = builders[(topic, partition)] = self.producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start the next
                deliveries.append(await self.producer.send_batch(builder, topic, partition=partition))
                builder = builders[(topic, partition)] = self.producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)  # a batch always takes its first record
        for (topic, partition), builder in builders.items():
            deliveries.append(await self.producer.send_batch(builder, topic, partition=partition))

    async def _partitions(self, topic: str) -> list[int]:
        known = self.producer.client.cluster.partitions_for_topic(topic)
        return sorted(known if known else await self.producer.partitions_for(topic))
