""":class:`MemoryVectorIndex`, the retrieval index in process memory: one :class:`VectorMatrix` per tenant (a query
never touches another tenant's rows), each row an :class:`IndexedChunk` with optional ACL labels and a residency
region (:mod:`workers.vectors.visibility` decides which rows a request may match)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from workers.embedding import Vectors
from workers.vectors.chunks import Hit, IndexedChunk
from workers.vectors.matrix import VectorMatrix
from workers.vectors.visibility import Visibility, visibility_masks


@dataclass
class _TenantIndex:
    matrix: VectorMatrix
    chunks: list[IndexedChunk] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)


class MemoryVectorIndex:
    """The retrieval index in process memory, one :class:`VectorMatrix` per tenant."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._tenants: dict[str, _TenantIndex] = {}

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    def size(self, tenant: str) -> int:
        index = self._tenants.get(tenant)
        return index.matrix.live_count if index else 0

    def chunks(self, tenant: str) -> list[IndexedChunk]:
        index = self._tenants.get(tenant)
        if index is None:
            return []
        return [index.chunks[row] for row in index.row_of.values()]

    def upsert(self, tenant: str, chunks: Sequence[IndexedChunk], vectors: Vectors) -> None:
        if not chunks:
            return
        index = self._tenants.setdefault(tenant, _TenantIndex(VectorMatrix(self.dim)))
        self.remove(tenant, [c.chunk_id for c in chunks if c.chunk_id in index.row_of])
        rows = index.matrix.add(vectors)
        for chunk, row in zip(chunks, rows.tolist(), strict=True):
            index.chunks.append(chunk)
            index.row_of[chunk.chunk_id] = row

    def remove(self, tenant: str, chunk_ids: Iterable[str]) -> int:
        index = self._tenants.get(tenant)
        if index is None:
            return 0
        rows = [index.row_of.pop(cid) for cid in chunk_ids if cid in index.row_of]
        index.matrix.remove(rows)
        return len(rows)

    def search(self, tenant: str, queries: Vectors, k: int,
               visibility: Sequence[Visibility]) -> list[list[Hit]]:
        index = self._tenants.get(tenant)
        if index is None:
            return [[] for _ in range(len(queries))]
        scores, rows = index.matrix.search(queries, k, visibility_masks(index.chunks, visibility))
        return [
            [Hit(index.chunks[row], float(score)) for score, row in zip(s.tolist(), r.tolist(), strict=True)
             if row >= 0]
            for s, r in zip(scores, rows, strict=True)
        ]
