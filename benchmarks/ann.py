"""Approximate vs exact search at scale, through the real index build (``retrieval.build_index``).

Synthetic vectors of low intrinsic dimension (clusters on a 16-d subspace of 128-d, plus noise): real
embeddings are like this, while uniform random vectors have no neighbourhoods and make every ANN look
bad. For ``exact`` and ``auto`` (and a product-quantised index under a small memory budget): build time
and peak memory (each build in its own process), recall@10 against the exact index, single-query median
and batched throughput (ranker level: the k nearest rows of the whole index).

    python benchmarks/ann.py                 # 1,000,000 x 128
    python benchmarks/ann.py --rows 100000   # a quick run
    python benchmarks/ann.py --rows 10000000 --runs exact,auto --work /tmp/ann10m   # 4.8 GiB of vectors

With ``--work`` the generated cache and manifest are kept there and reused by the next run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM, INTRINSIC, CLUSTERS = 128, 16, 2000
ATTRS = {"backbone": "synthetic", "layer": "none", "weights": "random:0", "input_size": [1, 1], "dim": DIM}


def generate(rows: int, seed: int) -> np.ndarray:
    """Clustered vectors on a low-dimensional subspace (the same basis and centres for every seed's rows)."""
    shape = np.random.default_rng(1234)
    basis = shape.normal(size=(INTRINSIC, DIM)).astype(np.float32)
    centres = shape.normal(size=(CLUSTERS, INTRINSIC)).astype(np.float32) * 3
    rng = np.random.default_rng(seed)
    local = centres[rng.integers(0, CLUSTERS, rows)] + rng.normal(size=(rows, INTRINSIC)).astype(np.float32)
    return (local @ basis + 0.1 * rng.normal(size=(rows, DIM)).astype(np.float32)).astype(np.float32)


def write_inputs(folder: Path, rows: int, make: Callable[[int, int], np.ndarray] | None = None,
                 attrs: dict | None = None, block: int = 100_000) -> tuple[Path, Path]:
    """A vector cache of ``rows`` vectors from ``make(count, seed)`` (default: ``generate``; block starting at row
    i seeded i + 1, so a size gives the same vectors every run) and a manifest of as many shop photos (one
    category), written ``block`` rows at a time."""
    import h5py

    from embeddings.extraction.cache import FORMAT

    make, attrs = make or generate, attrs or ATTRS
    dim = attrs["dim"]
    cache, manifest = folder / "vectors.h5", folder / "manifest.jsonl"
    with h5py.File(cache, "w") as handle, manifest.open("w") as lines:
        handle.attrs["format"] = FORMAT
        handle.attrs["meta"] = json.dumps(attrs)
        chunk = max(1, min(rows, (2 << 20) // (4 * dim)))
        handle.create_dataset("vectors", shape=(rows, dim), dtype="f4", chunks=(chunk, dim))
        handle.create_dataset("ids", shape=(rows,), dtype=h5py.string_dtype(), chunks=(max(1, min(rows, 4096)),))
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            handle["vectors"][start:stop] = make(stop - start, start + 1)
            handle["ids"][start:stop] = [f"shop/{i}.jpg" for i in range(start, stop)]
            lines.write("".join(f'{{"path": "shop/{i}.jpg", "kind": "shop", "photo": {i}, "product": {i}, '
                                f'"category": "all"}}\n' for i in range(start, stop)))
    return cache, manifest


def build_child(cache: str, manifest: str, out: str, method: str, memory: str) -> None:
    """Run in a child process: build one index, print its build time and peak memory as JSON."""
    from retrieval import AnnConfig, build_index

    began = time.perf_counter()
    index, _ = build_index(cache, manifest, out, ann=AnnConfig(method, max_memory=_bytes(memory)))
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"build_s": seconds, "peak_bytes": peak, "ann": index.attrs.get("ann")}))


def _bytes(text: str) -> int:
    from retrieval.tuning import parse_memory

    return parse_memory(text)


def build(cache: Path, manifest: Path, out: Path, method: str, memory: str = "4G") -> dict:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.ann import build_child; "
            f"build_child({str(cache)!r}, {str(manifest)!r}, {str(out)!r}, {method!r}, {memory!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(path: Path, queries: np.ndarray, truth: np.ndarray | None, singles: int = 200) -> dict:
    """Single-query median (over ``singles`` queries), batched throughput and recall@10 of the index at ``path``."""
    from retrieval import SearchEngine

    ranker = SearchEngine.load(path).ranker
    ranker.search(queries[:5], 10)  # warm up (page cache, FAISS)
    times = []
    for query in queries[:singles]:
        began = time.perf_counter()
        ranker.search(query[None], 10)
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    rows, _ = ranker.search(queries, 10)
    batched = len(queries) / (time.perf_counter() - began)
    recall = 1.0 if truth is None else float(np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)]))
    return {"single_ms": 1000 * float(np.median(times)), "batched_qps": batched, "recall": recall, "rows": rows}


def faiss_only_recall(path: Path, queries: np.ndarray, truth: np.ndarray) -> tuple[float, int]:
    """Recall@10 of the FAISS part alone (its own approximate distances, no exact re-ranking) and its bytes."""
    from retrieval import load_index
    from retrieval.ann import for_faiss, open_part
    from retrieval.tuning import search_params

    index = load_index(path)
    part = index.ann["all"]
    faiss_index = open_part(part.blob)
    _, found = faiss_index.search(for_faiss(queries, "cosine"), 10, params=search_params(faiss_index, part.info["value"]))
    to_row = np.empty(len(index), np.int64)
    to_row[index.ann_ids] = np.arange(len(index))
    rows = to_row[found]
    return float(np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)])), int(part.blob.nbytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--pq-memory", default="64M", help="budget that makes auto choose IVF + PQ")
    parser.add_argument("--memory", default="4G", help="--max-memory of the auto run")
    parser.add_argument("--runs", default="exact,auto,pq", help="which of exact, auto, pq to build (exact first)")
    parser.add_argument("--work", type=Path, help="folder to keep the generated inputs in and reuse them from "
                                                   "(default: a temporary one)")
    args = parser.parse_args(argv)
    runs = [r for r in args.runs.split(",") if r]
    if not runs or runs[0] != "exact" or set(runs) - {"exact", "auto", "pq"}:
        parser.error("--runs: exact first, then any of auto, pq")
    began = time.perf_counter()
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as temp:
        folder = Path(temp)
        inputs = args.work / f"inputs-{args.rows}" if args.work else folder / "inputs"
        if not (inputs / "done").exists():
            inputs.mkdir(parents=True, exist_ok=True)
            write_inputs(inputs, args.rows)
            (inputs / "done").write_text("")
        cache, manifest = inputs / "vectors.h5", inputs / "manifest.jsonl"
        queries = generate(args.queries, seed=10**9)
        print(f"{args.rows:,} x {DIM} clustered vectors ({INTRINSIC}-d intrinsic), {args.queries} new queries "
              f"(inputs written in {time.perf_counter() - began:.0f} s)", flush=True)
        results = {}
        settings = {"exact": ("exact", "4G"), "auto": ("auto", args.memory), "pq": ("auto", args.pq_memory)}
        for name in runs:
            method, memory = settings[name]
            built = build(cache, manifest, folder / f"{name}.h5", method, memory)
            # an exact scan of 10M rows takes seconds: its single-query median comes from fewer queries
            singles = 200 if name != "exact" else max(10, min(200, 200 * 1_000_000 // args.rows))
            measured = measure(folder / f"{name}.h5", queries, results["exact"]["rows"] if results else None, singles)
            results[name] = {**built, **measured}
            choice = "exact" if not built["ann"] else "; ".join(
                f"{i['factory']} {i['param']}={i['value']} tuned recall {i['recall']:.3f}" for i in built["ann"].values())
            print(f"{name:>5} ({choice}): build {built['build_s']:.1f} s, peak {built['peak_bytes'] / 2**30:.2f} GiB; "
                  f"recall@10 {measured['recall']:.4f}; single query {measured['single_ms']:.3f} ms; "
                  f"batched {measured['batched_qps']:.0f} queries/s", flush=True)
        exact = results["exact"]
        for name in ("auto", "pq"):
            if name in results:
                found = results[name]
                print(f"{name} vs exact: single query {exact['single_ms'] / found['single_ms']:.1f}x faster, "
                      f"batched {found['batched_qps'] / exact['batched_qps']:.1f}x, recall@10 {found['recall']:.4f}")
        pq = next((name for name in ("pq", "auto") if name in results and results[name]["ann"] and "PQ" in
                   next(iter(results[name]["ann"].values()))["factory"]), None)
        if pq:
            alone, size = faiss_only_recall(folder / f"{pq}.h5", queries, exact["rows"])
            ratio = size / (args.rows * DIM * 4)
            print(f"PQ index: {size / 2**20:.1f} MiB = {ratio:.3f}x the float32 vectors; recall@10 {alone:.4f} from "
                  f"its own codes, {results[pq]['recall']:.4f} with the exact re-ranking of its candidates "
                  f"(which reads their float32 rows from the index file)")
    print(f"wall time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
