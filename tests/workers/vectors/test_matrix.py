"""The vector matrix: the inverted lists agree with a full scan, stay bounded, skip removed rows; chunked storage."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from workers.embedding import l2_normalise
from workers.vectors import storage
from workers.vectors.matrix import VectorMatrix


def test_inverted_lists_find_near_duplicates_like_a_full_scan() -> None:
    rng = np.random.default_rng(1)
    base = l2_normalise(rng.standard_normal((3000, 64)))
    exact = VectorMatrix(64, brute_force_limit=10_000)
    lsh = VectorMatrix(64, dtype=np.float16, brute_force_limit=100, full_scan_factor=np.inf)
    exact.add(base)
    lsh.add(base)
    queries = l2_normalise(base[:200] + rng.standard_normal((200, 64)).astype(np.float32) * 0.04)
    _, exact_rows = exact.search(queries, 1)
    scores, lsh_rows = lsh.search(queries, 1)
    assert (exact_rows[:, 0] == np.arange(200)).all()
    assert (lsh_rows[:, 0] == exact_rows[:, 0]).mean() >= 0.99
    assert scores[:, 0].min() > 0.9
    lsh.remove([0])
    _, rows = lsh.search(queries[:1], 1)
    assert rows[0, 0] != 0


def _clustered(rng: np.random.Generator, n: int, dim: int = 64, clusters: int = 40, spread: float = 0.35
               ) -> npt.NDArray[np.float32]:
    """Unit vectors around a few centres: the shape of real prompt embeddings (templates, shared words)."""
    centres = l2_normalise(rng.standard_normal((clusters, dim)))
    members = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) * spread / 8
    return l2_normalise(members)


def _brute_force(data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32]
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    scores = queries @ data.T
    return scores.max(axis=1), scores.argmax(axis=1)


def test_recall_at_1_against_brute_force_on_clustered_data() -> None:
    rng = np.random.default_rng(2)
    data = _clustered(rng, 6000)
    matrix = VectorMatrix(64, brute_force_limit=500, list_size=32, probe_rows=640, full_scan_factor=np.inf)
    for start in range(0, len(data), 700):  # grows through training, then list splits
        matrix.add(data[start:start + 700])
    assert matrix.list_count >= len(data) // 32
    queries = l2_normalise(data[rng.choice(len(data), 300, replace=False)]
                           + rng.standard_normal((300, 64)).astype(np.float32) * 0.02)
    best, best_row = _brute_force(data, queries)
    scores, rows = matrix.search(queries, 3)
    assert (rows[:, 0] == best_row).mean() >= 0.99
    found = rows[:, 0] == best_row
    # The candidates that come back are scored exactly (float32 rows here), best first.
    np.testing.assert_allclose(scores[found, 0], best[found], rtol=0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_every_row_is_in_exactly_one_list_of_bounded_size() -> None:
    rng = np.random.default_rng(3)
    matrix = VectorMatrix(64, brute_force_limit=200, list_size=40)
    data = _clustered(rng, 1500)
    matrix.add(data[:300])
    for row in data[300:]:  # one row at a time, as the mirror sees a busy tenant
        matrix.add(row[None, :])
    members = np.concatenate(matrix.list_rows())
    assert sorted(members.tolist()) == list(range(1500))
    assert matrix.list_sizes().max() <= 40 and matrix.list_sizes().sum() == 1500


def test_skewed_data_keeps_lists_bounded_and_still_finds_the_odd_one() -> None:
    rng = np.random.default_rng(4)
    same = np.tile(l2_normalise(rng.standard_normal((1, 64))), (3000, 1))  # one prompt cached 3000 times
    rest = l2_normalise(rng.standard_normal((500, 64)))
    matrix = VectorMatrix(64, brute_force_limit=256, list_size=64, probe_rows=256, full_scan_factor=np.inf)
    matrix.add(np.concatenate([same, rest]))
    assert matrix.list_sizes().max() <= 64  # identical rows are cut into lists too: work per query stays bounded
    scores, rows = matrix.search(np.concatenate([same[:1], rest[:20]]), 2)
    assert rows[0, 0] < 3000 and abs(scores[0, 0] - 1.0) < 1e-5
    assert (rows[1:, 0] == np.arange(3000, 3020)).all()


def test_removed_and_disallowed_rows_are_skipped_above_the_limit() -> None:
    rng = np.random.default_rng(5)
    data = _clustered(rng, 2000)
    matrix = VectorMatrix(64, dtype=np.float16, brute_force_limit=100, list_size=50, full_scan_factor=np.inf)
    matrix.add(data)
    queries = data[:5]
    _, rows = matrix.search(queries, 1)
    assert (rows[:, 0] == np.arange(5)).all()
    matrix.remove([0, 1])
    allowed = np.ones((5, 2000), dtype=bool)
    allowed[2, 2] = False
    _, rows = matrix.search(queries, 3)
    assert 0 not in rows[0] and 1 not in rows[1]
    _, rows = matrix.search(queries, 3, allowed)
    assert 2 not in rows[2] and rows[3, 0] == 3
    assert matrix.live_count == 1998


def test_zero_rows_match_nothing_and_empty_batches_are_fine() -> None:
    matrix = VectorMatrix(8, brute_force_limit=4)
    matrix.add(np.zeros((10, 8), dtype=np.float32))
    scores, rows = matrix.search(np.zeros((0, 8), dtype=np.float32), 2)
    assert scores.shape == rows.shape == (0, 2)
    scores, _ = matrix.search(l2_normalise(np.ones((1, 8))), 2)
    assert (scores[0] == 0).all()


def test_a_big_batch_scans_everything_and_agrees_with_the_lists() -> None:
    rng = np.random.default_rng(6)
    data = _clustered(rng, 3000)
    lists = VectorMatrix(64, brute_force_limit=100, list_size=32, probe_rows=3000, full_scan_factor=np.inf)
    scan = VectorMatrix(64, brute_force_limit=100, list_size=32, probe_rows=3000, full_scan_factor=1.0)
    lists.add(data)
    scan.add(data)
    queries = data[:50]  # 50 x 3000 probed rows >= 1.0 x 3000 rows: the scan path; probing everything is exact too
    scores_lists, rows_lists = lists.search(queries, 3)
    scores_scan, rows_scan = scan.search(queries, 3)
    np.testing.assert_array_equal(rows_lists, rows_scan)
    np.testing.assert_allclose(scores_lists, scores_scan, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_floor_changes_nothing_at_or_above_it_and_skips_queries_that_cannot_reach_it(dtype: type) -> None:
    rng = np.random.default_rng(9)
    data = _clustered(rng, 2000)
    matrix = VectorMatrix(64, dtype=dtype)
    matrix.add(data)
    near = l2_normalise(data[:40] + 0.02 * rng.standard_normal((40, 64)).astype(np.float32))
    queries = np.concatenate([near, l2_normalise(rng.standard_normal((60, 64)).astype(np.float32))])
    floor = 0.9
    scores, rows = matrix.search(queries, 5)
    floored_scores, floored_rows = matrix.search(queries, 5, floor=floor)
    kept = scores >= floor
    np.testing.assert_array_equal(floored_scores[kept], scores[kept])  # bit for bit, same rows, same order
    np.testing.assert_array_equal(floored_rows[kept], rows[kept])
    assert (floored_scores[~kept] < floor).all()
    skipped = (floored_rows == -1).all(axis=1)
    assert skipped[40:].all() and not skipped[:40].any()  # the random queries are nowhere near 0.9


def test_rows_in_later_storage_chunks_are_found_and_scored_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_CHUNK_BYTES", 16 << 10)  # 256 exact rows, 1024 codes, 4096 scales a chunk
    rng = np.random.default_rng(7)
    data = l2_normalise(rng.standard_normal((9000, 16)))
    matrix = VectorMatrix(16, brute_force_limit=1000, list_size=64, probe_rows=9000, rerank_rows=9000,
                          full_scan_factor=np.inf)
    for start in range(0, len(data), 2000):
        matrix.add(data[start:start + 2000])
    wanted = np.array([0, 255, 256, 4095, 4096, 8999])
    scores, rows = matrix.search(data[wanted], 40)  # 40 rows re-scored: the grouped-by-chunk path too
    assert (rows[:, 0] == wanted).all()
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", data[wanted], data[rows]), atol=1e-6)
    scan = VectorMatrix(16, brute_force_limit=10_000)  # every row scanned, chunk by chunk
    scan.add(data)
    scan_scores, scan_rows = scan.search(data[wanted], 40)
    np.testing.assert_array_equal(scan_rows, rows)
    np.testing.assert_allclose(scan_scores, scores, atol=1e-6)
