"""What ``--dtype float16`` does to an index of raw 4096-d vectors: size, recall@10 and speed against float32.

Both indexes are built by the real path (``retrieval.build_index``) from one vector cache of VGG19-fc2-like
vectors (non-negative, as after fc2's ReLU, clustered on a low-dimensional subspace) and searched exactly
(cosine, no head) with the same new queries; recall@10 is the float16 index's top 10 against the float32 one's.

    python benchmarks/dtype.py                  # 100,000 x 4096 (1.6 GB of float32)
    python benchmarks/dtype.py --rows 20000     # a quick run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ann import write_inputs  # noqa: E402

DIM, INTRINSIC, CLUSTERS = 4096, 64, 500
ATTRS = {"backbone": "synthetic", "layer": "fc2", "weights": "random:0", "input_size": [1, 1], "dim": DIM}


def generate(rows: int, seed: int) -> np.ndarray:
    """fc2-like rows: ReLU of clustered points on a ``INTRINSIC``-d subspace plus noise (same basis every seed)."""
    shape = np.random.default_rng(1234)
    basis = shape.normal(size=(INTRINSIC, DIM)).astype(np.float32) / np.sqrt(INTRINSIC)
    centres = shape.normal(size=(CLUSTERS, INTRINSIC)).astype(np.float32) * 2
    rng = np.random.default_rng(seed)
    local = centres[rng.integers(0, CLUSTERS, rows)] + rng.normal(size=(rows, INTRINSIC)).astype(np.float32)
    return np.maximum(local @ basis + 0.3 * rng.normal(size=(rows, DIM)).astype(np.float32), 0)


def measure(path: Path, queries: np.ndarray, singles: int) -> dict:
    from retrieval import SearchEngine

    ranker = SearchEngine.load(path).ranker
    ranker.search(queries[:2], 10)  # warm up
    times = []
    for query in queries[:singles]:
        began = time.perf_counter()
        ranker.search(query[None], 10)
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    rows, _ = ranker.search(queries, 10)
    return {"single_ms": 1000 * float(np.median(times)), "batched_qps": len(queries) / (time.perf_counter() - began),
            "rows": rows, "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--singles", type=int, default=50, help="single queries timed for the median")
    parser.add_argument("--work", type=Path, help="folder for the files (default: a temporary one)")
    args = parser.parse_args(argv)
    from retrieval import build_index

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work) as temp:
        folder = Path(temp)
        cache, manifest = write_inputs(folder, args.rows, generate, ATTRS, block=10_000)
        queries = generate(args.queries, seed=10**9)
        print(f"{args.rows:,} x {DIM} fc2-like vectors, {args.queries} new queries", flush=True)
        found = {}
        for dtype in ("float32", "float16"):
            start = time.perf_counter()
            build_index(cache, manifest, folder / f"{dtype}.h5", dtype=dtype)
            built = time.perf_counter() - start
            found[dtype] = measure(folder / f"{dtype}.h5", queries, args.singles)
            print(f"{dtype}: file {found[dtype]['bytes'] / 2**30:.2f} GiB, build {built:.0f} s, single query "
                  f"{found[dtype]['single_ms']:.1f} ms, batched {found[dtype]['batched_qps']:.1f} queries/s", flush=True)
        exact, half = found["float32"]["rows"], found["float16"]["rows"]
        recall = float(np.mean([len(set(h) & set(e)) / 10 for h, e in zip(half, exact)]))
        same_first = float(np.mean(half[:, 0] == exact[:, 0]))
        print(f"float16 vs float32: recall@10 {recall:.4f}, same nearest row {same_first:.3f}, file "
              f"{found['float16']['bytes'] / found['float32']['bytes']:.3f}x, single query "
              f"{found['float16']['single_ms'] / found['float32']['single_ms']:.2f}x the time")
    print(f"wall time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
