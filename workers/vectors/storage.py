"""Where a :class:`~workers.vectors.matrix.VectorMatrix` keeps its rows.

Layout. Each inverted list is one array of (sign-bit words, row id) per row, so a probe concatenates whole lists
(one call, no per-row gather) and compares ~3k rows in a few vectorised passes. Exact rows, codes and scales stay
in row order in fixed 8 MB chunks: a full chunk never moves, so growing to 100k rows never briefly holds two copies
of a matrix (a doubling array did: +60 MB of peak RSS at 100k float16 rows), and the 256 reranked rows are
gathered sorted, one ``take`` per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.embedding import Vectors

Rows = npt.NDArray[np.int64]
Bits = npt.NDArray[np.uint64]

_CHUNK_BYTES = 8 << 20  # storage chunk size: 16k float16 rows or 32k int8 codes at 256 dimensions
_FEW_ROWS = 32  # up to this many exact rows are fetched one by one (cheaper than grouping them by chunk)


class ChunkedRows:
    """Rows by id in fixed-size chunks: a full chunk never moves, so growing copies at most one chunk.

    One contiguous matrix grown by doubling briefly holds the old and the new copy (about 2x the matrix at 100k
    rows); here the transient is at most one chunk, and the unused capacity is only the tail of the last chunk.
    """

    def __init__(self, shape: tuple[int, ...], dtype: type[np.generic]) -> None:
        self.shape = shape  # of one row: (dim,) for vectors, () for a scalar per row
        self.dtype = dtype
        self.chunk_rows = max(256, _CHUNK_BYTES // (int(np.prod(shape)) * np.dtype(dtype).itemsize))
        self.chunks: list[npt.NDArray[Any]] = []
        self.count = 0

    def append(self, values: npt.NDArray[Any]) -> None:
        done = 0
        while done < len(values):
            chunk, at = divmod(self.count, self.chunk_rows)
            n = min(len(values) - done, self.chunk_rows - at)
            if chunk == len(self.chunks):
                self.chunks.append(np.zeros((0, *self.shape), dtype=self.dtype))
            if at + n > len(self.chunks[chunk]):  # only the last chunk grows (doubling, up to chunk_rows)
                capacity = min(self.chunk_rows, max(at + n, 2 * len(self.chunks[chunk]), 256))
                self.chunks[chunk] = regrown(self.chunks[chunk], at, capacity)
            self.chunks[chunk][at:at + n] = values[done:done + n]
            self.count += n
            done += n

    def take(self, rows: Rows) -> Vectors:
        """The rows as float32, in the order asked."""
        if len(self.chunks) == 1:  # one gather and one conversion (~3x cheaper than 15 rows one by one)
            return np.take(self.chunks[0], rows, axis=0).astype(np.float32)
        out = np.empty((len(rows), *self.shape), dtype=np.float32)
        if len(rows) <= _FEW_ROWS:
            for i, row in enumerate(rows.tolist()):
                out[i] = self.chunks[row // self.chunk_rows][row % self.chunk_rows]
            return out
        order = np.argsort(rows)
        out[order] = self.gather(rows[order])
        return out

    def gather(self, rows: Rows) -> npt.NDArray[Any]:
        """Sorted ``rows`` in the stored dtype: one contiguous ``take`` per chunk they fall in."""
        if len(self.chunks) == 1:
            return np.take(self.chunks[0], rows, axis=0)
        out = np.empty((len(rows), *self.shape), dtype=self.dtype)
        ends = np.searchsorted(rows, np.arange(1, len(self.chunks) + 1) * self.chunk_rows).tolist()
        lo = 0
        for chunk, hi in enumerate(ends):
            if hi > lo:
                np.take(self.chunks[chunk], rows[lo:hi] - chunk * self.chunk_rows, axis=0, out=out[lo:hi])
            lo = hi
        return out

    def blocks(self, size: int) -> Iterator[tuple[int, npt.NDArray[Any]]]:
        """``(first row, rows)`` of every stored row in order, ``size`` rows at most at a time (views)."""
        for chunk, values in enumerate(self.chunks):
            used = min(len(values), self.count - chunk * self.chunk_rows)
            for start in range(0, used, size):
                yield chunk * self.chunk_rows + start, values[start:min(used, start + size)]


class InvertedList:
    """One list's rows: per row the sign-bit words and, as one more word, the row id. A probe concatenates whole
    lists (no gather), and one array instead of two halves the concatenations on the request path.

    ``entries`` is an exactly sized view of storage with some slack (1.5x growth: a list is small, so the slack is
    too).
    """

    __slots__ = ("_store", "entries")

    def __init__(self, entries: Bits) -> None:
        self._store = self.entries = entries

    @classmethod
    def empty(cls, words: int) -> InvertedList:
        return cls(np.zeros((0, words + 1), dtype=np.uint64))

    @property
    def size(self) -> int:
        return len(self.entries)

    @property
    def rows(self) -> Rows:
        return rows_of(self.entries)

    def append(self, rows: Rows, bits: Bits) -> None:
        used, size = self.size, self.size + len(rows)
        if size > len(self._store):
            self._store = regrown(self._store, used, max(size, used + used // 2, 8))
        self._store[used:size, :-1] = bits
        self._store[used:size, -1] = rows
        self.entries = self._store[:size]

    def part(self, members: npt.NDArray[np.bool_]) -> InvertedList:
        """A new, exactly sized list of the members selected by the mask."""
        return InvertedList(self.entries[members])


def rows_of(entries: Bits) -> Rows:
    rows: Rows = entries[:, -1].view(np.int64)
    return rows


def regrown(old: npt.NDArray[Any], used: int, capacity: int) -> npt.NDArray[Any]:
    new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
    new[:used] = old[:used]
    return new
