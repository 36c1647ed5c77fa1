"""Per-tenant vector search: top-k cosine for a whole batch of queries at once.

:class:`VectorMatrix` is the numeric core shared by the retrieval index and the semantic cache's mirror. Rows are
unit vectors kept twice: once in the storage dtype (float32, or float16 to halve memory) for exact scoring, and once
as int8 codes with a per-row scale for the scan. Deletions only clear a ``live`` flag.

* Up to ``brute_force_limit`` rows a search scans every int8 code of the matrix (one product for the whole batch).
* Above it the matrix becomes an inverted file: spherical k-means on a sample picks the first centroids, every row
  joins the list of its nearest centroid, and a list that outgrows ``list_size`` is split in two by 2-means on its
  own rows (identical rows, which 2-means cannot separate, are cut in half). Lists therefore stay bounded however
  skewed the data is, and the index grows with the data without a global retrain on the request path. A query
  probes lists nearest-centroid first until ``probe_rows`` rows are covered, so one lookup scores at most
  ``probe_rows + list_size`` rows whatever the distribution.
* A batch whose lists would together cover more than a quarter of the rows (``full_scan_factor``) scans every row
  instead, in one blocked matrix product: cheaper per row than gathering lists (a batch of 32 at 10k rows).
* Either way the ``k + shortlist`` best rows by int8 score are re-scored exactly from the stored rows, and only
  those exact scores are returned: the threshold and the near-miss guard downstream see exact similarities.

Why this shape (measured with ``bench/cache_bench.py`` on 100k diverse prompts): the LSH shortlist it replaces
degenerated on templated prompts (thousands of rows per bucket); a full float32 scan reads the whole matrix per
query; numpy's float16→float32 conversion costs several ns per element here, so scanning float16 rows is slower
than scanning float32, while int8 converts quickly and is a quarter of the bytes. The int8 scan goes through small
reused buffers (a matrix is used by one thread: the stage's event loop). With lists of ≤ 128 rows and 3072 probed
rows, recall@1 against exact float32 brute force is ≥ 0.99 on that workload (a top-1 within 1e-3 of the exact best
counts: float16 rows and duplicate prompts make exact ties), and 1.0 where the exact best is above the cache
threshold.

:class:`MemoryVectorIndex` is the retrieval index: one matrix per tenant (a query never touches another tenant's
rows), each row an :class:`IndexedChunk` with optional ACL labels and a residency region.

Visibility rule (documented in the README too): a chunk without labels is visible to every principal of its
tenant; a labelled chunk is visible only to a principal holding at least one of its labels. A chunk with a region is
visible only when the request's allowed regions are unknown or include it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from workers.embedding import Vectors

Rows = npt.NDArray[np.int64]

PROBE_ROWS = 3072  # rows scored per query above brute_force_limit (see the module docstring)
_BLOCK = 1024  # rows converted from int8 at a time (1 MB of float32: stays in the CPU cache)


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

    def __init__(self, dim: int, *, dtype: type[np.floating] = np.float32, brute_force_limit: int = 4096,
                 list_size: int = 128, probe_rows: int = PROBE_ROWS, shortlist: int = 8, full_scan_factor: float = 4.0,
                 capacity: int = 1024) -> None:
        self.dim = dim
        self.dtype = dtype
        self.brute_force_limit = brute_force_limit
        self.list_size = list_size  # a list holding more rows than this is split in two
        self.probe_rows = probe_rows  # lists are probed, nearest centroid first, until this many rows are covered
        self.shortlist = shortlist  # extra rows per query re-scored exactly beyond the k asked for
        # A batch scans every row when its lists would cover more than 1/full_scan_factor of the matrix.
        self.full_scan_factor = full_scan_factor
        self._vectors = np.zeros((capacity, dim), dtype=dtype)
        self._codes = np.zeros((capacity, dim), dtype=np.int8)
        self._scales = np.zeros(capacity, dtype=np.float32)
        self._live = np.zeros(capacity, dtype=bool)
        self.count = 0  # rows ever added (live or not)
        self._lists: list[Rows] = []  # the inverted lists: rows nearest to each centroid
        self._centroid_rows: list[Vectors] = []
        self._centroids = np.zeros((0, dim), dtype=np.float32)  # _centroid_rows stacked, rebuilt after splits
        self._sizes = np.zeros(0, dtype=np.int64)  # len() of each list, rebuilt after every add
        self._rng = np.random.default_rng(0x7011)
        self._buffers: tuple[npt.NDArray[np.int8], Vectors] | None = None

    @property
    def live_count(self) -> int:
        return int(self._live[: self.count].sum())

    @property
    def list_count(self) -> int:
        """Inverted lists (0 while the matrix is small enough to scan whole)."""
        return len(self._lists)

    def list_sizes(self) -> npt.NDArray[np.int64]:
        return self._sizes.copy()

    # -- adding rows -------------------------------------------------------------------------------------------

    def add(self, vectors: Vectors) -> Rows:
        n = len(vectors)
        if self.count + n > len(self._vectors):
            self._grow(max(self.count + n, 2 * len(self._vectors)))
        rows = np.arange(self.count, self.count + n, dtype=np.int64)
        exact = np.asarray(vectors, dtype=np.float32)
        for start in range(0, n, _BLOCK):  # blocks keep the temporaries small: memory is the worker's budget
            block, at = exact[start:start + _BLOCK], self.count + start
            scales = (np.abs(block).max(axis=1) / 127).astype(np.float32)
            self._vectors[at:at + len(block)] = block
            self._scales[at:at + len(block)] = scales
            self._codes[at:at + len(block)] = np.rint(np.divide(block, scales[:, None], out=np.zeros_like(block),
                                                                where=scales[:, None] > 0))
        self._live[rows] = True
        self.count += n
        if self._lists:
            self._assign(rows, exact)
        elif self.count > self.brute_force_limit:
            self._train()
        return rows

    def _grow(self, capacity: int) -> None:
        # np.zeros maps its pages lazily: the unused capacity costs no memory until rows land in it. (ndarray.resize
        # would realloc in place but zero-fills, making all of the capacity resident at once.)
        def grown(old: npt.NDArray[Any]) -> npt.NDArray[Any]:
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self.count] = old[: self.count]
            return new

        self._vectors, self._codes = grown(self._vectors), grown(self._codes)
        self._scales, self._live = grown(self._scales), grown(self._live)

    def _exact_rows(self, rows: Rows) -> Vectors:
        return self._vectors[rows].astype(np.float32)

    def _train(self) -> None:
        """First coarse quantizer: k-means on a sample, then every row to its nearest centroid, lists split to size."""
        rows = np.arange(self.count, dtype=np.int64)
        lists = max(1, min(64, self.count // self.list_size))
        sample = rows if self.count <= 64 * self.list_size else np.sort(
            self._rng.choice(rows, 64 * self.list_size, replace=False))
        self._centroid_rows = list(_kmeans(self._exact_rows(sample), lists, iterations=8, rng=self._rng))
        self._centroids = np.stack(self._centroid_rows)
        self._lists = [np.zeros(0, dtype=np.int64) for _ in range(lists)]
        for start in range(0, self.count, _BLOCK):  # blocks bound the float32 copy
            block = rows[start:start + _BLOCK]
            self._assign(block, self._exact_rows(block))

    def _assign(self, rows: Rows, vectors: Vectors) -> None:
        nearest = np.concatenate([np.argmax(vectors[start:start + _BLOCK] @ self._centroids.T, axis=1)
                                  for start in range(0, len(rows), _BLOCK)])  # blocks bound the score matrix
        order = np.argsort(nearest, kind="stable")
        targets, starts = np.unique(nearest[order], return_index=True)
        oversized = []
        for target, group in zip(targets.tolist(), np.split(rows[order], starts[1:]), strict=True):
            self._lists[target] = np.concatenate([self._lists[target], group])
            if len(self._lists[target]) > self.list_size:
                oversized.append(target)
        if oversized:
            while oversized:
                self._split(oversized.pop(), oversized)
            self._centroids = np.stack(self._centroid_rows)
        self._sizes = np.fromiter((len(r) for r in self._lists), dtype=np.int64, count=len(self._lists))

    def _split(self, target: int, oversized: list[int]) -> None:
        """Bisect one list with 2-means on its rows; the new half becomes a new list."""
        rows = self._lists[target]
        points = self._exact_rows(rows)
        centroids = _kmeans(points, 2, iterations=6, rng=self._rng)
        side = np.argmax(points @ centroids.T, axis=1).astype(bool)
        if side.all() or not side.any():  # identical rows cannot be told apart: cut the list in half instead
            side = np.arange(len(rows)) >= len(rows) // 2
        self._centroid_rows[target] = centroids[0]
        self._centroid_rows.append(centroids[1])
        self._lists[target] = rows[~side]
        self._lists.append(rows[side])
        for index in (target, len(self._lists) - 1):
            if len(self._lists[index]) > self.list_size:
                oversized.append(index)

    def remove(self, rows: Iterable[int]) -> None:
        for row in rows:
            self._live[row] = False

    # -- search ------------------------------------------------------------------------------------------------

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
        queries = np.asarray(queries, dtype=np.float32)
        # A big batch on a modest matrix: one blocked matrix product over every row costs less than each query
        # gathering its own lists (measured: a gathered row costs ~10x a row of a batched product).
        if not self._lists or m * self.probe_rows >= self.full_scan_factor * self.count:
            everything = np.arange(self.count, dtype=np.int64)
            approx = np.empty((m, self.count), dtype=np.float32)
            _, block = self._block_buffers()
            for start in range(0, self.count, _BLOCK):
                n = min(_BLOCK, self.count - start)
                block[:n] = self._codes[start:start + n]
                approx[:, start:start + n] = queries @ block[:n].T
            approx *= self._scales[: self.count]
            for i in range(m):
                self._rescore(queries[i], everything, approx[i], k, allowed, i, scores_out[i], rows_out[i])
            return scores_out, rows_out
        # Lists are probed nearest centroid first until probe_rows rows are covered: the work per query is
        # bounded (at most probe_rows + list_size rows) whatever the distribution of the data.
        order = np.argsort(-(queries @ self._centroids.T), axis=1)
        probed = (np.cumsum(self._sizes[order], axis=1) < self.probe_rows).sum(axis=1) + 1
        for i in range(m):
            rows = np.concatenate([self._lists[j] for j in order[i, : probed[i]].tolist()])
            self._rescore(queries[i], rows, self._approximate(rows, queries[i]), k, allowed, i, scores_out[i],
                          rows_out[i])
        return scores_out, rows_out

    def _approximate(self, rows: Rows, query: Vectors) -> Vectors:
        """int8 scores of ``rows``, a block at a time through reused buffers: no large temporaries, no page faults."""
        approx = np.empty(len(rows), dtype=np.float32)
        codes, block = self._block_buffers()
        for start in range(0, len(rows), _BLOCK):
            chunk = rows[start:start + _BLOCK]
            n = len(chunk)
            np.take(self._codes, chunk, axis=0, out=codes[:n])
            block[:n] = codes[:n]
            np.dot(block[:n], query, out=approx[start:start + n])
        approx *= self._scales[rows]
        return approx

    def _block_buffers(self) -> tuple[npt.NDArray[np.int8], Vectors]:
        if self._buffers is None:
            self._buffers = (np.empty((_BLOCK, self.dim), dtype=np.int8), np.empty((_BLOCK, self.dim), np.float32))
        return self._buffers

    def _rescore(self, query: Vectors, rows: Rows, approx: Vectors, k: int,
                 allowed: npt.NDArray[np.bool_] | None, position: int, scores_out: Vectors, rows_out: Rows) -> None:
        """Keep the best ``k + shortlist`` rows by int8 score, score those exactly, write the top ``k``."""
        keep = self._live[rows] if allowed is None else self._live[rows] & allowed[position, rows]
        rows, approx = rows[keep], approx[keep]
        if len(rows) == 0:
            return
        width = min(len(rows), k + self.shortlist)
        if width < len(rows):
            best = np.argpartition(-approx, width - 1)[:width]
            rows = rows[best]
        exact = self._exact_rows(rows) @ query
        order = np.argsort(-exact, kind="stable")[:k]
        scores_out[: len(order)] = exact[order]
        rows_out[: len(order)] = rows[order]


def _kmeans(points: Vectors, clusters: int, *, iterations: int, rng: np.random.Generator) -> Vectors:
    """Spherical k-means (cosine): centroids are unit vectors; an emptied cluster keeps its previous centroid."""
    centroids = points[rng.choice(len(points), clusters, replace=len(points) < clusters)].copy()
    for _ in range(iterations):
        nearest = np.argmax(points @ centroids.T, axis=1)
        membership = np.zeros((clusters, len(points)), dtype=np.float32)
        membership[nearest, np.arange(len(points))] = 1.0
        sums = membership @ points
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        filled = norms[:, 0] > 0
        centroids[filled] = sums[filled] / norms[filled]
    return centroids


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
