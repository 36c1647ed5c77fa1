"""The codes a :class:`~workers.vectors.matrix.VectorMatrix` scores with, cheapest first: sign bits (one per
dimension; random-hyperplane hashing) compared by Hamming distance, int8 codes with a per-row scale, and the
spherical k-means that picks the inverted lists' centroids (the coarse quantizer)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from workers.embedding import Vectors
from workers.vectors.storage import Bits


def int8_codes(block: Vectors) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Each row as int8 codes and one float32 scale (``row ≈ codes * scale``); an all-zero row gets scale 0."""
    scales = (np.abs(block).max(axis=1) / 127).astype(np.float32)
    codes = np.rint(np.divide(block, scales[:, None], out=np.zeros_like(block),
                              where=scales[:, None] > 0)).astype(np.int8)
    return codes, scales


def sign_bits(vectors: Vectors, words: int) -> Bits:
    """One bit per dimension (positive or not), packed into ``words`` uint64 per row (zero-padded)."""
    packed = np.zeros((len(vectors), 8 * words), dtype=np.uint8)
    packed[:, : (vectors.shape[1] + 7) // 8] = np.packbits(vectors > 0, axis=1)
    bits: Bits = packed.view(np.uint64)
    return bits


def hamming(entries: Bits, query_bits: Bits) -> npt.NDArray[np.uint16]:
    """Differing sign bits between each list entry and the query (``query_bits`` has one more word, zero, opposite
    the row id: the XOR runs over the contiguous entries and the row id's column is left out of the sum). Columns
    are added one by one: numpy's ``sum(axis=1)`` over 4 columns costs several times more."""
    counts: npt.NDArray[np.uint8] = np.bitwise_count(entries ^ query_bits)
    distance = counts[:, 0].astype(np.uint16)
    for word in range(1, counts.shape[1] - 1):
        distance += counts[:, word]
    return distance


def kmeans(points: Vectors, clusters: int, *, iterations: int, rng: np.random.Generator) -> Vectors:
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
