"""The retrieval index as the retrieval stage sees it; :class:`~workers.vectors.index.MemoryVectorIndex` is the
in-memory implementation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from workers.embedding import Vectors
from workers.vectors.chunks import Hit, IndexedChunk
from workers.vectors.visibility import Visibility


class VectorIndex(Protocol):
    def upsert(self, tenant: str, chunks: Sequence[IndexedChunk], vectors: Vectors) -> None: ...

    def remove(self, tenant: str, chunk_ids: Iterable[str]) -> int: ...

    def search(self, tenant: str, queries: Vectors, k: int,
               visibility: Sequence[Visibility]) -> list[list[Hit]]: ...

    def size(self, tenant: str) -> int: ...
