"""Per-tenant vector search: top-k cosine for a whole batch of queries at once.

:class:`VectorMatrix` is the numeric core shared by the retrieval index and the semantic cache's mirror: rows are
unit vectors kept in one growable matrix (float32, or float16 to halve memory — the few candidate rows are converted
back to float32 before scoring), deletions only clear a ``live`` flag, and a search scores every query of a batch in
one matrix product. Above ``brute_force_limit`` rows a search no longer scans the matrix: random-hyperplane LSH
(``bands`` tables of ``band_bits`` sign bits each) proposes candidates and only those are scored exactly. With 32
bands of 12 bits a pair at cosine 0.9 shares at least one band with probability ≈ 0.996, and at 0.95 ≈ 1 - 1e-6,
so for near-duplicate lookups (the semantic cache, thresholds ≥ 0.85) the shortlist loses almost nothing.

:class:`MemoryVectorIndex` is the retrieval index: one matrix per tenant (a query never touches another tenant's
rows), each row an :class:`IndexedChunk` with optional ACL labels and a residency region.

Visibility rule (documented in the README too): a chunk without labels is visible to every principal of its
tenant; a labelled chunk is visible only to a principal holding at least one of its labels. A chunk with a region is
visible only when the request's allowed regions are unknown or include it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from workers.embedding import Vectors

Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class IndexedChunk:
    chunk_id: str  # unique within the tenant, e.g. "refund-policy.md#2"
    doc_id: str
    text: str
    labels: frozenset[str] = frozenset()
    region: str | None = None


@dataclass(frozen=True)
class Visibility:
    """What one request may see: its principal's labels and, if known, its allowed regions."""

    labels: frozenset[str] = frozenset()
    regions: frozenset[str] | None = None

    def allows(self, chunk: IndexedChunk) -> bool:
        if chunk.labels and not (chunk.labels & self.labels):
            return False
        return not (chunk.region is not None and self.regions is not None and chunk.region not in self.regions)


@dataclass(frozen=True)
class Hit:
    chunk: IndexedChunk
    score: float


class VectorIndex(Protocol):
    def upsert(self, tenant: str, chunks: Sequence[IndexedChunk], vectors: Vectors) -> None: ...

    def remove(self, tenant: str, chunk_ids: Iterable[str]) -> int: ...

    def search(self, tenant: str, queries: Vectors, k: int,
               visibility: Sequence[Visibility]) -> list[list[Hit]]: ...

    def size(self, tenant: str) -> int: ...


class VectorMatrix:
    """Growable matrix of unit rows with batched top-k search (see the module docstring)."""

    def __init__(self, dim: int, *, dtype: type[np.floating] = np.float32, brute_force_limit: int = 8192,
                 bands: int = 32, band_bits: int = 12, capacity: int = 1024) -> None:
        self.dim = dim
        self.dtype = dtype
        self.brute_force_limit = brute_force_limit
        self._vectors = np.zeros((capacity, dim), dtype=dtype)
        self._live = np.zeros(capacity, dtype=bool)
        self.count = 0  # rows ever added (live or not)
        self.bands, self.band_bits = bands, band_bits
        planes = np.random.default_rng(0x7011).standard_normal((dim, bands * band_bits)).astype(np.float32)
        self._planes = planes
        self._weights = (1 << np.arange(band_bits, dtype=np.int64))
        self._tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]

    @property
    def live_count(self) -> int:
        return int(self._live[: self.count].sum())

    def _band_keys(self, vectors: Vectors) -> npt.NDArray[np.int64]:
        bits = (vectors.astype(np.float32, copy=False) @ self._planes) > 0
        keys: npt.NDArray[np.int64] = bits.reshape(len(vectors), self.bands, self.band_bits) @ self._weights
        return keys

    def add(self, vectors: Vectors) -> Rows:
        n = len(vectors)
        if self.count + n > len(self._vectors):
            capacity = max(self.count + n, 2 * len(self._vectors))
            grown = np.zeros((capacity, self.dim), dtype=self.dtype)
            grown[: self.count] = self._vectors[: self.count]
            live = np.zeros(capacity, dtype=bool)
            live[: self.count] = self._live[: self.count]
            self._vectors, self._live = grown, live
        rows = np.arange(self.count, self.count + n, dtype=np.int64)
        self._vectors[rows] = vectors
        self._live[rows] = True
        keys = self._band_keys(vectors)
        for band, table in enumerate(self._tables):
            # Group the new rows by bucket with one sort per band: a bulk load costs O(buckets), not O(rows).
            order = np.argsort(keys[:, band], kind="stable")
            bucket_keys, starts = np.unique(keys[order, band], return_index=True)
            for key, group in zip(bucket_keys.tolist(), np.split(rows[order], starts[1:]), strict=True):
                table.setdefault(key, []).extend(group.tolist())
        self.count += n
        return rows

    def remove(self, rows: Iterable[int]) -> None:
        for row in rows:
            self._live[row] = False

    def _candidates(self, query_keys: list[int]) -> Rows:
        found: list[int] = []
        for table, key in zip(self._tables, query_keys, strict=True):
            bucket = table.get(key)
            if bucket:
                found.extend(bucket)
        return np.unique(np.asarray(found, dtype=np.int64))

    def search(self, queries: Vectors, k: int, allowed: npt.NDArray[np.bool_] | None = None
               ) -> tuple[npt.NDArray[np.float32], Rows]:
        """Top-``k`` (scores, rows) per query, best first; missing slots have score ``-inf`` and row ``-1``.

        ``allowed`` is an optional ``(len(queries), count)`` mask of rows each query may match.
        """
        m = len(queries)
        scores_out = np.full((m, k), -np.inf, dtype=np.float32)
        rows_out = np.full((m, k), -1, dtype=np.int64)
        if m == 0 or self.count == 0 or k <= 0:
            return scores_out, rows_out
        queries = queries.astype(np.float32, copy=False)
        if self.count <= self.brute_force_limit:
            # One matrix product for the whole batch; dead or disallowed rows are pushed to -inf.
            scores = queries @ self._vectors[: self.count].astype(np.float32, copy=False).T
            mask = np.broadcast_to(self._live[: self.count], scores.shape)
            if allowed is not None:
                mask = mask & allowed
            scores = np.where(mask, scores, -np.inf)
            self._top_k(scores, np.broadcast_to(np.arange(self.count), scores.shape), k, scores_out, rows_out)
            return scores_out, rows_out
        for i, query_keys in enumerate(self._band_keys(queries).tolist()):
            rows = self._candidates(query_keys)
            keep = self._live[rows] if allowed is None else self._live[rows] & allowed[i, rows]
            rows = rows[keep]
            if len(rows) == 0:
                continue
            scores = self._vectors[rows].astype(np.float32) @ queries[i]
            self._top_k(scores[None, :], rows[None, :], k, scores_out[i:i + 1], rows_out[i:i + 1])
        return scores_out, rows_out

    @staticmethod
    def _top_k(scores: npt.NDArray[np.float32], rows: npt.ArrayLike, k: int, scores_out: npt.NDArray[np.float32],
               rows_out: Rows) -> None:
        rows = np.asarray(rows)
        width = scores.shape[1]
        take = min(k, width)
        if take < width:
            part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        else:
            part = np.broadcast_to(np.arange(width), scores.shape)
        top_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
        best_scores = np.take_along_axis(scores, best, axis=1)
        best_rows = np.take_along_axis(rows, best, axis=1)
        valid = np.isfinite(best_scores)
        scores_out[:, :take] = np.where(valid, best_scores, -np.inf)
        rows_out[:, :take] = np.where(valid, best_rows, -1)


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
        # One mask per distinct visibility (usually one or two per batch), not one per query.
        masks: dict[Visibility, npt.NDArray[np.bool_]] = {}
        for vis in visibility:
            if vis not in masks:
                masks[vis] = np.fromiter((vis.allows(c) for c in index.chunks), dtype=bool, count=len(index.chunks))
        allowed = np.stack([masks[vis] for vis in visibility]) if visibility else None
        scores, rows = index.matrix.search(queries, k, allowed)
        return [
            [Hit(index.chunks[row], float(score)) for score, row in zip(s.tolist(), r.tolist(), strict=True)
             if row >= 0]
            for s, r in zip(scores, rows, strict=True)
        ]
