import numpy as np
import pytest
from scipy.spatial.distance import cdist

from retrieval.ranking import Ranker


def brute_force(queries, vectors, k, metric):
    distances = cdist(queries, vectors, metric=metric)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def test_tiny_index_with_known_neighbours():
    vectors = np.array([[0, 0], [1, 0], [0, 2], [3, 3]], dtype=np.float32)
    rows, distances = Ranker(vectors).search(np.array([[0.75, 0.25]]), k=3)
    assert rows.tolist() == [[1, 0, 2]]
    np.testing.assert_allclose(distances[0], [np.hypot(0.25, 0.25), np.hypot(0.75, 0.25), np.hypot(0.75, 1.75)])


def test_ties_are_broken_by_row_order():
    vectors = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
    rows, _ = Ranker(vectors).search(np.zeros((1, 2)), k=4)
    assert rows.tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("queries, k, scratch", [(1, 10, 48 << 20), (37, 5, 4096), (200, 50, 20000)])
def test_equals_brute_force_cdist(metric, queries, k, scratch):
    rng = np.random.default_rng(queries)
    vectors = rng.normal(size=(3000, 24)).astype(np.float32)
    query = rng.normal(size=(queries, 24)).astype(np.float32)
    rows, distances = Ranker(vectors, metric, scratch_bytes=scratch).search(query, k)
    expected_rows, expected_distances = brute_force(query, vectors, k, metric)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("mapped", [False, True])
def test_float16_rows_rank_as_cdist_ranks_their_values(tmp_path, metric, mapped):
    """A float16 index (``--dtype float16``) is converted a chunk at a time, by FAISS's decoder into a reused
    buffer: every chunk must be its own rows, also when the last chunk is shorter than the buffer."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(2500, 40)).astype(np.float16)
    if mapped:
        np.save(tmp_path / "v.npy", vectors)
        vectors = np.load(tmp_path / "v.npy", mmap_mode="r")
    query = rng.normal(size=(9, 40)).astype(np.float32)
    rows, distances = Ranker(vectors, metric, scratch_bytes=30_000).search(query, 7)
    expected_rows, expected_distances = brute_force(query, np.asarray(vectors, np.float64), 7, metric)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-9, atol=1e-12)


def test_near_duplicate_rows_still_exact():
    """Rows a float32 rounding apart: the scan may misorder them, the exact re-ranking does not."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(1, 64)).astype(np.float32) * 100
    vectors = np.repeat(base, 500, axis=0) + rng.normal(scale=1e-3, size=(500, 64)).astype(np.float32)
    query = base + 1.0
    rows, distances = Ranker(vectors, scratch_bytes=4096).search(query, k=20)
    expected_rows, expected_distances = brute_force(query, vectors, 20, "euclidean")
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)


def test_row_range_restricts_the_search():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(100, 8)).astype(np.float32)
    query = rng.normal(size=(3, 8)).astype(np.float32)
    rows, _ = Ranker(vectors).search(query, k=5, start=40, stop=60)
    expected, _ = brute_force(query, vectors[40:60], 5, "euclidean")
    np.testing.assert_array_equal(rows, expected + 40)


def test_k_larger_than_the_index_returns_everything():
    rows, _ = Ranker(np.eye(3, dtype=np.float32)).search(np.ones((1, 3)), k=10)
    assert sorted(rows[0].tolist()) == [0, 1, 2]


def test_bad_calls():
    ranker = Ranker(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="queries have dimension 2, the index 3"):
        ranker.search(np.ones((1, 2)))
    with pytest.raises(ValueError, match="nothing to rank"):
        ranker.search(np.ones((1, 3)), start=2, stop=2)
    with pytest.raises(ValueError, match="unknown metric"):
        Ranker(np.eye(3), metric="manhattan")


def test_a_large_batch_over_many_chunks_keeps_only_the_best_candidates():
    """Each chunk's candidates are merged into the best so far as the scan goes: memory is O(queries x k), not
    O(queries x k x chunks) (at 10M rows and 1,000 queries that was gigabytes)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(20_000, 8)).astype(np.float32)
    query = rng.normal(size=(200, 8)).astype(np.float32)
    ranker = Ranker(vectors, "euclidean", scratch_bytes=64 << 10)
    tracemalloc.start()
    try:
        rows, distances = ranker.search(query, 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected_rows, expected_distances = brute_force(query, vectors, 10, "euclidean")
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-9, atol=1e-12)
    assert peak < 8 << 20, peak  # the candidates of all 477 chunks would take 48 MB
