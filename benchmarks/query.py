"""Search speed and memory: ``SearchEngine`` against plain ``cdist`` + ``argsort``, on a synthetic index.

    python benchmarks/query.py [--rows 400000] [--dim 128] [--queries 200] [--k 10]

In one run: single-query latency against the time to read the index's bytes once (the memory-bandwidth
floor), batched queries per second against ``cdist`` + ``argsort``, and peak memory of loading the index
and searching it against the index's own size (tracemalloc, which sees NumPy's buffers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval import IndexData, SearchEngine, load_index, save_index  # noqa: E402
from retrieval.store import as_bytes  # noqa: E402


def best_of(function, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def synthetic_index(rows: int, dim: int) -> IndexData:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(rows, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return IndexData(embeddings, as_bytes([f"shop/{i}.jpg" for i in range(rows)]), np.arange(rows),
                     np.arange(rows) // 4, as_bytes(["dresses"] * rows), np.zeros(rows, np.int16),
                     {"backbone": {}, "head": None, "metric": "euclidean", "roots": ["/data"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    with tempfile.TemporaryDirectory() as temp:
        path = Path(temp) / "index.h5"
        save_index(path, synthetic_index(args.rows, args.dim))
        tracemalloc.start()
        engine = SearchEngine(load_index(path))
        engine.search_embeddings(queries[:1], k=args.k, distinct_products=False)
        engine.search_embeddings(queries, k=args.k, distinct_products=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    matrix = engine.index.embeddings
    index_bytes = matrix.nbytes
    read_once = best_of(lambda: np.max(matrix))
    single = best_of(lambda: engine.ranker.search(queries[:1], args.k), repeat=10)
    single_engine = best_of(lambda: engine.search_embeddings(queries[:1], k=args.k), repeat=10)
    batched = best_of(lambda: engine.ranker.search(queries, args.k), repeat=3)
    plain_count = min(args.queries, 20)

    def plain() -> None:
        distances = cdist(queries[:plain_count], matrix)
        np.argsort(distances, axis=1)[:, : args.k]

    plain_time = best_of(plain, repeat=2) / plain_count
    plain_single = best_of(lambda: np.argsort(cdist(queries[:1], matrix), axis=1)[:, : args.k], repeat=3)

    rows, _ = engine.ranker.search(queries[:plain_count], args.k)
    reference = np.argsort(cdist(queries[:plain_count], matrix), axis=1, kind="stable")[:, : args.k]
    assert np.array_equal(rows, reference), "ranking differs from cdist + argsort"

    print(f"index: {args.rows} x {args.dim} float32 = {index_bytes / 2**20:.0f} MiB; k = {args.k}")
    print(f"read the index once (np.max):      {read_once * 1e3:8.2f} ms")
    print(f"single query, Ranker:              {single * 1e3:8.2f} ms  ({single / read_once:.2f}x the read floor)")
    print(f"single query, SearchEngine:        {single_engine * 1e3:8.2f} ms  (distinct products)")
    print(f"single query, cdist + argsort:     {plain_single * 1e3:8.2f} ms  ({plain_single / single:.1f}x slower)")
    print(f"batched ({args.queries} queries), Ranker:  {args.queries / batched:8.1f} queries/s")
    print(f"cdist + argsort ({plain_count} queries):     {1 / plain_time:8.1f} queries/s  "
          f"(Ranker {plain_time / (batched / args.queries):.1f}x faster per query)")
    print(f"peak memory, load + search:        {peak / 2**20:8.1f} MiB  ({peak / index_bytes:.2f}x the index)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
