"""The retrieval index on Kafka: chunking, publishing chunks, and materialising the index from the topic.

``<prefix>.index.chunks`` is compacted and keyed ``{tenant}/{chunk_id}``, so it holds the current chunks; reading
it from the beginning rebuilds the same index in any process. :class:`IndexMaterialiser` does that on start (the
retrieval worker serves only after it has caught up with the end offsets it saw at start) and then keeps tailing,
so ``tollway index add`` takes effect in running workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.errors import BadEvent, ServiceUnavailable
from schemas.index import IndexChunkEvent, record_key
from streams.runtime.codec import decode_as, encode
from streams.runtime.topics import topology
from streams.settings import Settings
from workers.embedding import Embedder
from workers.vectors.chunks import IndexedChunk
from workers.vectors.index import MemoryVectorIndex

log = logging.getLogger(__name__)

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def chunk_markdown(text: str, *, max_chars: int = 700) -> list[str]:
    """Split on headings, then pack paragraphs up to ``max_chars``; each chunk starts with its heading path."""
    chunks: list[str] = []
    path: list[str] = []
    paragraphs: list[str] = []

    def flush() -> None:
        title = " > ".join(path)
        current = ""
        for paragraph in paragraphs:
            if current and len(current) + len(paragraph) + 2 > max_chars:
                chunks.append(f"{title}\n{current}".strip())
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current:
            chunks.append(f"{title}\n{current}".strip())
        paragraphs.clear()

    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        heading = _HEADING.match(line)
        if heading or not line.strip():
            if block:
                paragraphs.append(" ".join(block))
                block = []
            if heading:
                flush()
                level = len(heading.group(1))
                path[:] = [*path[: level - 1], heading.group(2).strip()]
            continue
        block.append(line.strip())
    flush()
    return [c for c in chunks if c]


def chunk_file(path: Path, *, tenant: str, labels: Sequence[str] = (), region: str | None = None,
               doc_id: str | None = None) -> list[IndexChunkEvent]:
    doc = doc_id or path.name
    now_ms = time.time_ns() // 1_000_000
    return [IndexChunkEvent(tenant=tenant, doc_id=doc, chunk_id=f"{doc}#{seq}", seq=seq, text=text,
                            labels=sorted(set(labels)), region=region, source=str(path), indexed_at_ms=now_ms)
            for seq, text in enumerate(chunk_markdown(path.read_text(encoding="utf-8")))]


def to_indexed(event: IndexChunkEvent) -> IndexedChunk:
    return IndexedChunk(chunk_id=event.chunk_id, doc_id=event.doc_id, text=event.text,
                        labels=frozenset(event.labels), region=event.region)


async def publish(settings: Settings, chunks: Iterable[IndexChunkEvent],
                  tombstones: Iterable[tuple[str, str]] = ()) -> int:
    """Publish chunks and ``(tenant, chunk_id)`` deletions; returns how many records were acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True,
                                max_request_size=settings.max_message_bytes * 2)
    try:
        await asyncio.wait_for(producer.start(), 15)
    except Exception as exc:
        raise ServiceUnavailable(f"Kafka is not reachable at {settings.bootstrap_servers}: {exc}") from exc
    topic = topology(settings).index
    try:
        deliveries = [await producer.send(topic, encode(c), key=c.record_key) for c in chunks]
        deliveries += [await producer.send(topic, None, key=record_key(t, cid)) for t, cid in tombstones]
        await asyncio.gather(*deliveries)
        return len(deliveries)
    finally:
        await producer.stop()


async def _index_consumer(settings: Settings) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    topic = topology(settings).index
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=settings.max_message_bytes * 2)
    await consumer.start()
    partitions = None
    for _ in range(100):  # a topic created a moment ago takes a little while to show in the metadata
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            break
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        await asyncio.sleep(0.05)
    if not partitions:
        await consumer.stop()
        raise ServiceUnavailable(f"topic {topic} has no partitions; run `tollway topics` first")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer, tps


async def _behind(consumer: AIOKafkaConsumer, tps: list[TopicPartition], end: dict[TopicPartition, int]) -> bool:
    for tp in tps:
        if await consumer.position(tp) < end[tp]:
            return True
    return False


async def read_index(settings: Settings) -> dict[str, IndexChunkEvent]:
    """The current chunks by record key, read from the compacted topic up to its end (used by the CLI)."""
    consumer, tps = await _index_consumer(settings)
    current: dict[str, IndexChunkEvent] = {}
    try:
        end = await consumer.end_offsets(tps)
        while await _behind(consumer, tps, end):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    key = (record.key or b"").decode()
                    if record.value is None:
                        current.pop(key, None)
                        continue
                    try:
                        current[key] = decode_as(record.value, IndexChunkEvent)
                    except BadEvent as exc:
                        log.warning("skipping a bad index record at offset %d: %s", record.offset, exc)
        return current
    finally:
        await consumer.stop()


@dataclass
class IndexMaterialiser:
    """Keeps a :class:`MemoryVectorIndex` equal to the topic's content (see the module docstring)."""

    settings: Settings
    index: MemoryVectorIndex
    embedder: Embedder
    applied: int = 0
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self, *, timeout_s: float = 60.0) -> None:
        self._consumer, tps = await _index_consumer(self.settings)
        end = await self._consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while await _behind(self._consumer, tps, end):
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"index topic not read to its end within {timeout_s:.0f} s")
            await self._poll(timeout_ms=200)
        log.info("retrieval index materialised: %d record(s), tenants %s", self.applied, self.index.tenants())
        self._task = asyncio.create_task(self._tail(), name="index-materialiser")

    async def _tail(self) -> None:
        while True:
            try:
                await self._poll(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving the index we have; the next poll retries
                log.exception("index materialiser poll failed")
                await asyncio.sleep(1)

    async def _poll(self, *, timeout_ms: int) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=2000)
        upserts: dict[tuple[str, str], IndexChunkEvent] = {}
        for records in batches.values():
            for record in records:
                self.applied += 1
                tenant, _, chunk_id = (record.key or b"").decode().partition("/")
                if record.value is None:
                    upserts.pop((tenant, chunk_id), None)
                    self.index.remove(tenant, [chunk_id])
                    continue
                try:
                    event = decode_as(record.value, IndexChunkEvent)
                except BadEvent as exc:
                    log.warning("skipping a bad index record at offset %d: %s", record.offset, exc)
                    continue
                upserts[(event.tenant, event.chunk_id)] = event
        by_tenant: dict[str, list[IndexChunkEvent]] = {}
        for event in upserts.values():
            by_tenant.setdefault(event.tenant, []).append(event)
        for tenant, events in by_tenant.items():
            vectors = await self.embedder.embed([e.text for e in events])
            self.index.upsert(tenant, [to_indexed(e) for e in events], vectors)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
