"""The semantic mirror: keys and expiry by row, nothing but vectors and ids kept per entry."""

from __future__ import annotations

import numpy as np

from workers.cache.store import LogRecord, SemanticMirror
from workers.embedding import l2_normalise


def test_mirror_returns_each_rows_key_and_skips_expired_rows() -> None:
    rng = np.random.default_rng(8)
    vectors = l2_normalise(rng.standard_normal((6000, 32)))  # past the brute-force limit: inverted lists
    keys = [f"k{i}" if i % 3 else f"ключ-{i}-" + "x" * (i % 70) for i in range(len(vectors))]
    mirror = SemanticMirror(32)
    expiry = [50 if i == 7 else 10**12 for i in range(len(vectors))]
    mirror.add("t", [LogRecord(keys[i], "s", "", expiry[i], vectors[i]) for i in range(3000)])
    mirror.add("t", [LogRecord(keys[i], "s", "", expiry[i], vectors[i]) for i in range(3000, len(vectors))])
    wanted = [0, 1, 7, 2999, 3000, 5999]
    found = mirror.search("t", ["s"] * len(wanted), vectors[wanted], k=1, threshold=0.99, now_ms=100)
    assert [f[0].key if f else None for f in found] == [keys[0], keys[1], None, keys[2999], keys[3000], keys[5999]]
    assert found[0][0].similarity > 0.999
    assert mirror.search("t", ["other scope"], vectors[:1], k=1, threshold=0.0, now_ms=0) == [[]]
    assert mirror.size("t") == len(vectors) - 1  # the expired row was dropped when a search met it
