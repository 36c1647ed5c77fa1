"""What the retrieval index holds and returns: a chunk of a tenant's document, and a chunk with its score."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexedChunk:
    chunk_id: str  # unique within the tenant, e.g. "refund-policy.md#2"
    doc_id: str
    text: str
    labels: frozenset[str] = frozenset()
    region: str | None = None


@dataclass(frozen=True)
class Hit:
    chunk: IndexedChunk
    score: float
