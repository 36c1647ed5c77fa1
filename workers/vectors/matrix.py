"""Top-k cosine for a whole batch of queries at once.

:class:`VectorMatrix` is the numeric core shared by the retrieval index and the semantic cache's mirror. Rows are
unit vectors kept three ways: in the storage dtype (float32, or float16 to halve memory) for exact scoring, as int8
codes with a per-row scale, and as sign bits (one per dimension, 32 bytes a row at 256 dimensions) in the inverted
lists. Deletions only clear a ``live`` flag.

* Up to ``brute_force_limit`` rows a search scores every int8 code of the matrix (one product for the whole batch).
* Above it the matrix becomes an inverted file: spherical k-means on a sample picks the first centroids, every row
  joins the list of its nearest centroid, and a list that outgrows ``list_size`` is split in two by 2-means on its
  own rows (identical rows, which 2-means cannot separate, are cut in half). Lists therefore stay bounded however
  skewed the data is, and the index grows with the data without a global retrain on the request path. A query
  probes lists nearest-centroid first until ``probe_rows`` rows are covered, so one lookup touches at most
  ``probe_rows + list_size`` rows whatever the distribution. Of those, the ``rerank_rows`` nearest by Hamming
  distance of the sign bits (random-hyperplane hashing: the hashing embedder's dimensions are random projections)
  get an int8 score.
* A batch whose lists would together cover more than a quarter of the rows (``full_scan_factor``) scores every
  row's int8 code instead, in one blocked matrix product (a batch of 32 at 10k rows).
* Either way the ``k + shortlist`` best rows by int8 score are re-scored exactly from the stored rows, and only
  those exact scores are returned: the threshold and the near-miss guard downstream see exact similarities.
* A caller that uses only scores above a threshold (the semantic cache) passes it as ``floor``: in the batched
  scan, a query whose best int8 score is further below it than the int8 and float16 errors can reach skips the
  re-scoring (a partition of every row per query, about a third of a scan's cost); what is returned at or above the
  floor is unchanged, bit for bit.

Where the rows live: :mod:`workers.vectors.storage`.

Why this shape (measured with ``bench/cache_bench.py`` on 100k diverse prompts): the LSH shortlist it replaced
degenerated on templated prompts (thousands of rows per bucket); a full float32 scan reads the whole matrix per
query; numpy's float16→float32 conversion costs several ns per element here, so scoring float16 rows is slower
than float32, while int8 converts quickly and is a quarter of the bytes; converting and scoring 3k probed int8 rows
per query cost ~1.7x what the sign-bit pass plus 256 int8 rows cost. Over all 100k rows, the 256 nearest by sign bits
held the exact best for every query of that workload. With lists of ≤ 128 rows and 3072 probed rows, recall@1
against exact float32 brute force is ≥ 0.99 (a top-1 within 1e-3 of the exact best counts: float16 rows and
duplicate prompts make exact ties), and 1.0 where the exact best is above the cache threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from workers.embedding import Vectors
from workers.vectors.quantise import hamming, int8_codes, kmeans, sign_bits
from workers.vectors.storage import Bits, ChunkedRows, InvertedList, Rows, regrown, rows_of

PROBE_ROWS = 3072  # rows probed per query above brute_force_limit (see the module docstring)
RERANK_ROWS = 256  # probed rows nearest by sign bits that get an int8 score
_BLOCK = 1024  # rows converted from int8 at a time (1 MB of float32: stays in the CPU cache)


class VectorMatrix:
    """Growable matrix of unit rows with batched top-k search (see the module docstring)."""

    def __init__(self, dim: int, *, dtype: type[np.floating] = np.float32, brute_force_limit: int = 4096,
                 list_size: int = 128, probe_rows: int = PROBE_ROWS, rerank_rows: int = RERANK_ROWS,
                 shortlist: int = 8, full_scan_factor: float = 4.0, capacity: int = 1024) -> None:
        self.dim = dim
        self.dtype = dtype
        self.brute_force_limit = brute_force_limit
        self.list_size = list_size  # a list holding more rows than this is split in two
        self.probe_rows = probe_rows  # lists are probed, nearest centroid first, until this many rows are covered
        self.rerank_rows = rerank_rows  # probed rows nearest by sign bits that are then scored from int8 codes
        self.shortlist = shortlist  # extra rows per query re-scored exactly beyond the k asked for
        # A batch scans every row when its lists would cover more than 1/full_scan_factor of the matrix.
        self.full_scan_factor = full_scan_factor
        self._words = (dim + 63) // 64
        self._exact = ChunkedRows((dim,), dtype)
        self._codes = ChunkedRows((dim,), np.int8)
        self._scales = ChunkedRows((), np.float32)
        self._live = np.zeros(capacity, dtype=bool)
        self.count = 0  # rows ever added (live or not)
        self._removed = 0  # remove() calls: while 0 every row is live and search skips the check
        # Until the matrix is trained, one list without a centroid holds every row (in row order).
        self._lists = [InvertedList.empty(self._words)]
        self._centroid_rows: list[Vectors] = []
        self._centroids = np.zeros((0, dim), dtype=np.float32)  # _centroid_rows stacked, rebuilt after splits
        self._sizes = np.zeros(0, dtype=np.int64)  # size of each list, rebuilt after every add
        self._rng = np.random.default_rng(0x7011)
        self._buffer = np.empty((_BLOCK, dim), dtype=np.float32)  # int8 codes converted for BLAS, reused
        self._max_scale = 0.0  # the largest int8 scale of any row (inf once a row's is not a number): floor bounds

    @property
    def live_count(self) -> int:
        return int(self._live[: self.count].sum())

    @property
    def list_count(self) -> int:
        """Inverted lists (0 while the matrix is small enough to scan whole)."""
        return len(self._centroid_rows)

    def list_sizes(self) -> npt.NDArray[np.int64]:
        return self._sizes.copy()

    def list_rows(self) -> list[Rows]:
        """The rows of each inverted list (a copy; for tests and diagnostics)."""
        return [lst.rows.copy() for lst in self._lists] if self._centroid_rows else []

    # -- adding rows -------------------------------------------------------------------------------------------

    def add(self, vectors: Vectors) -> Rows:
        n = len(vectors)
        if self.count + n > len(self._live):
            self._live = regrown(self._live, self.count, max(self.count + n, 2 * len(self._live)))
        rows = np.arange(self.count, self.count + n, dtype=np.int64)
        for start in range(0, n, _BLOCK):  # blocks keep the temporaries small: memory is the worker's budget
            block = np.asarray(vectors[start:start + _BLOCK], dtype=np.float32)
            codes, scales = int8_codes(block)
            self._codes.append(codes)
            self._scales.append(scales)
            self._exact.append(block)
            top = float(scales.max()) if len(scales) else 0.0
            if not top <= self._max_scale:
                self._max_scale = np.inf if np.isnan(top) else top
            if self._centroid_rows:
                self._assign(rows[start:start + _BLOCK], block, sign_bits(block, self._words))
            else:
                self._lists[0].append(rows[start:start + _BLOCK], sign_bits(block, self._words))
        self._live[rows] = True
        self.count += n
        if not self._centroid_rows and self.count > self.brute_force_limit:
            self._train()
        return rows

    def _train(self) -> None:
        """First coarse quantizer: k-means on a sample, then every row to its nearest centroid, lists split to size."""
        everything = self._lists[0]
        rows = np.arange(self.count, dtype=np.int64)
        lists = max(1, min(64, self.count // self.list_size))
        sample = rows if self.count <= 64 * self.list_size else np.sort(
            self._rng.choice(rows, 64 * self.list_size, replace=False))
        self._centroid_rows = list(kmeans(self._exact.take(sample), lists, iterations=8, rng=self._rng))
        self._centroids = np.stack(self._centroid_rows)
        self._lists = [InvertedList.empty(self._words) for _ in range(lists)]
        for start in range(0, self.count, _BLOCK):  # blocks bound the float32 copy
            block = rows[start:start + _BLOCK]
            self._assign(block, self._exact.take(block), everything.entries[start:start + _BLOCK, :-1])

    def _assign(self, rows: Rows, vectors: Vectors, bits: Bits) -> None:
        nearest = np.argmax(vectors @ self._centroids.T, axis=1)
        order = np.argsort(nearest, kind="stable")
        targets, starts = np.unique(nearest[order], return_index=True)
        bounds = [*starts.tolist(), len(rows)]
        oversized = []
        for target, lo, hi in zip(targets.tolist(), bounds, bounds[1:], strict=False):
            members = order[lo:hi]
            self._lists[target].append(rows[members], bits[members])
            if self._lists[target].size > self.list_size:
                oversized.append(target)
        if oversized:
            while oversized:
                self._split(oversized.pop(), oversized)
            self._centroids = np.stack(self._centroid_rows)
        self._sizes = np.fromiter((lst.size for lst in self._lists), dtype=np.int64, count=len(self._lists))

    def _split(self, target: int, oversized: list[int]) -> None:
        """Bisect one list with 2-means on its rows; the new half becomes a new list."""
        whole = self._lists[target]
        points = self._exact.take(whole.rows)
        centroids = kmeans(points, 2, iterations=6, rng=self._rng)
        side = np.argmax(points @ centroids.T, axis=1).astype(bool)
        if side.all() or not side.any():  # identical rows cannot be told apart: cut the list in half instead
            side = np.arange(whole.size) >= whole.size // 2
        self._centroid_rows[target] = centroids[0]
        self._centroid_rows.append(centroids[1])
        self._lists[target] = whole.part(~side)
        self._lists.append(whole.part(side))
        for index in (target, len(self._lists) - 1):
            if self._lists[index].size > self.list_size:
                oversized.append(index)

    def remove(self, rows: Iterable[int]) -> None:
        for row in rows:
            self._live[row] = False
            self._removed += 1

    # -- search ------------------------------------------------------------------------------------------------

    def search(self, queries: Vectors, k: int, allowed: npt.NDArray[np.bool_] | None = None, *,
               floor: float | None = None) -> tuple[npt.NDArray[np.float32], Rows]:
        """Top-``k`` (scores, rows) per query, best first; missing slots have score ``-inf`` and row ``-1``.

        ``allowed`` is an optional ``(len(queries), count)`` mask of rows each query may match. ``floor``: the
        caller uses only scores at or above it, so when every row is scored (the batched scan), a query whose int8
        scores are all too low for any exact score to reach it (:meth:`_hopeless`) gets no rows; any other query
        gets exactly what it would without a floor.
        """
        m = len(queries)
        scores_out = np.full((m, k), -np.inf, dtype=np.float32)
        rows_out = np.full((m, k), -1, dtype=np.int64)
        if m == 0 or self.count == 0 or k <= 0:
            return scores_out, rows_out
        queries = np.asarray(queries, dtype=np.float32)
        # A big batch on a modest matrix: one blocked matrix product over every row costs less than each query
        # probing its own lists (measured: a probed row costs ~10x a row of a batched product).
        if not self._centroid_rows or m * self.probe_rows >= self.full_scan_factor * self.count:
            everything = np.arange(self.count, dtype=np.int64)
            approx = self._scan_all(queries)
            hopeless = self._hopeless(queries, approx, floor)
            for i in range(m):
                if not hopeless[i]:
                    self._rescore(queries[i], everything, approx[i], k, allowed, i, scores_out[i], rows_out[i])
            return scores_out, rows_out
        # Lists are probed nearest centroid first until probe_rows rows are covered: the work per query is
        # bounded (at most probe_rows + list_size rows) whatever the distribution of the data.
        query_bits = sign_bits(queries, self._words + 1)  # + a zero word opposite each entry's row id
        rerank = max(self.rerank_rows, 4 * (k + self.shortlist))
        for i, nearest in enumerate(self._nearest_lists(queries)):
            entries = np.concatenate([self._lists[j].entries for j in nearest])
            if allowed is not None or self._removed:
                rows = rows_of(entries)
                entries = entries[self._live[rows] if allowed is None else self._live[rows] & allowed[i, rows]]
            rows = rows_of(entries)
            if len(rows) > rerank:  # sign bits pick the rows worth an int8 score
                rows = rows[np.argpartition(hamming(entries, query_bits[i]), rerank - 1)[:rerank]]
            rows = np.sort(rows)  # gathered chunk by chunk
            approx = (self._codes.gather(rows).astype(np.float32) @ queries[i]) * self._scales.gather(rows)
            self._rescore(queries[i], rows, approx, k, None, i, scores_out[i], rows_out[i])
        return scores_out, rows_out

    def _nearest_lists(self, queries: Vectors) -> Iterator[list[int]]:
        """Per query, the lists nearest centroid first that together cover ``probe_rows`` rows.

        One product scores every centroid for the batch; then, per query and in 1-D (cheaper than the same steps
        along an axis of the batch), only the best few centroids are sorted: a full argsort of ~1,300 scores costs
        more than the rest of the ranking. When the few do not cover ``probe_rows`` rows (tiny lists), every
        centroid is sorted.
        """
        scores = self._centroids @ queries[0] if len(queries) == 1 else queries @ self._centroids.T
        lists = len(self._sizes)
        few = min(lists, 4 * self.probe_rows // max(1, self.list_size) + 1)
        for row in scores.reshape(len(queries), lists):
            best = np.argpartition(row, lists - few)[lists - few:]
            best = best[np.argsort(-row[best])]
            covered = np.cumsum(self._sizes[best])
            if covered[-1] < self.probe_rows and few < lists:
                best = np.argsort(-row)
                covered = np.cumsum(self._sizes[best])
            yield best[: int(np.searchsorted(covered, self.probe_rows)) + 1].tolist()

    def _scan_all(self, queries: Vectors) -> Vectors:
        """int8 scores of every row for each query, ``(len(queries), count)``: codes converted to float32 a block
        at a time into one reused buffer (a matrix is used by one thread, the stage's event loop), scored by BLAS
        while the block is still in the CPU cache."""
        approx = np.empty((len(queries), self.count), dtype=np.float32)
        for start, codes in self._codes.blocks(_BLOCK):
            block = self._buffer[: len(codes)]
            np.copyto(block, codes, casting="unsafe")
            np.matmul(queries, block.T, out=approx[:, start:start + len(codes)])
        for start, scales in self._scales.blocks(self._scales.chunk_rows):
            approx[:, start:start + len(scales)] *= scales
        return approx

    def _hopeless(self, queries: Vectors, approx: Vectors, floor: float | None) -> npt.NDArray[np.bool_]:
        """Per query, whether no row's exact score can reach ``floor``, judged from its int8 scores ``approx``.

        An int8 score is within ``scale * (|q|_1 / 2)`` of the row's float32 dot product (codes are rounded to the
        nearest step of the row's scale), the float16 row within ``2**-11 * |v|_2 * |q|_2 <= scale * |q|_2`` of it
        (``|v|_2 <= 16 * 127 * scale`` at 256 dimensions; ``sqrt(dim)`` in general), and float32 rounding of either
        dot product adds well under ``0.01 * scale * |q|_1``. The largest scale of any row bounds them all. The
        rescoring this skips is most of a search's cost once the matrix holds thousands of rows and, at a cache
        threshold, most queries find nothing near it.
        """
        hopeless = np.zeros(len(queries), dtype=bool)
        if floor is None or not np.isfinite(self._max_scale):
            return hopeless
        l1 = np.abs(queries).sum(axis=1, dtype=np.float64)
        l2 = np.sqrt(np.square(queries, dtype=np.float64).sum(axis=1)) * (np.sqrt(self.dim) * 127 * 2.0**-11)
        margin = self._max_scale * (0.51 * l1 + l2) + 1e-6
        best = approx.max(axis=1) if approx.shape[1] else np.full(len(queries), -np.inf)
        return np.asarray(best < floor - margin)  # NaN anywhere: not hopeless, searched as before

    def _rescore(self, query: Vectors, rows: Rows, approx: Vectors, k: int,
                 allowed: npt.NDArray[np.bool_] | None, position: int, scores_out: Vectors, rows_out: Rows) -> None:
        """Keep the best ``k + shortlist`` rows by int8 score, score those exactly, write the top ``k``."""
        if allowed is not None or self._removed:
            keep = self._live[rows] if allowed is None else self._live[rows] & allowed[position, rows]
            rows, approx = rows[keep], approx[keep]
        if len(rows) == 0:
            return
        width = min(len(rows), k + self.shortlist)
        if width < len(rows):
            best = np.argpartition(-approx, width - 1)[:width]
            rows = rows[best]
        exact = self._exact.take(rows) @ query
        order = np.argsort(-exact, kind="stable")[:k]
        scores_out[: len(order)] = exact[order]
        rows_out[: len(order)] = rows[order]

