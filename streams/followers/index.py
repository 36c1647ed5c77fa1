"""The retrieval index on Kafka: chunking, publishing chunks, and materialising the index from the topic.

``<prefix>.index.chunks`` is compacted and keyed ``{tenant}/{chunk_id}``, so it holds the current chunks; reading
it from the beginning rebuilds the same index in any process. :class:`IndexMaterialiser` does that on start (the
retrieval worker serves only after it has caught up with the end offsets it saw at start) and then keeps tailing,
so ``tollway index add`` takes effect in running workers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from aiokafka import ConsumerRecord

from schemas.errors import BadEvent
from schemas.index import IndexChunkEvent, record_key
from streams.followers.base import TopicFollower, read_to_end
from streams.runtime.codec import decode_as, encode
from streams.runtime.connections import new_producer, start
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
    producer = new_producer(settings, role="policy-admin", client_id=f"{settings.worker_id}-index")
    await start(producer, settings, "index publisher")
    topic = topology(settings).index
    try:
        deliveries = [await producer.send(topic, encode(c), key=c.record_key) for c in chunks]
        deliveries += [await producer.send(topic, None, key=record_key(t, cid)) for t, cid in tombstones]
        await asyncio.gather(*deliveries)
        return len(deliveries)
    finally:
        await producer.stop()


async def read_index(settings: Settings) -> dict[str, IndexChunkEvent]:
    """The current chunks by record key, read from the compacted topic up to its end (used by the CLI)."""
    current: dict[str, IndexChunkEvent] = {}
    for record in await read_to_end(settings, topology(settings).index):
        key = (record.key or b"").decode()
        if record.value is None:
            current.pop(key, None)
            continue
        try:
            current[key] = decode_as(record.value, IndexChunkEvent)
        except BadEvent as exc:
            log.warning("skipping a bad index record at offset %d: %s", record.offset, exc)
    return current


class IndexMaterialiser(TopicFollower):
    """Keeps a :class:`MemoryVectorIndex` equal to the topic's content (see the module docstring)."""

    def __init__(self, settings: Settings, index: MemoryVectorIndex, embedder: Embedder) -> None:
        super().__init__(settings, topology(settings).index, role="stage-retrieval", start_at="beginning",
                         catch_up=True)
        self.index = index
        self.embedder = embedder
        self.applied = 0

    async def start(self, *, since_ms: int | None = None, timeout_s: float = 60.0) -> None:
        await super().start(since_ms=since_ms, timeout_s=timeout_s)
        log.info("retrieval index materialised: %d record(s), tenants %s", self.applied, self.index.tenants())

    async def on_failure(self, exc: Exception) -> bool:
        log.error("index materialiser poll failed (serving the index it has; retrying): %r", exc)
        await asyncio.sleep(1)
        return True

    async def apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        upserts: dict[tuple[str, str], IndexChunkEvent] = {}
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
