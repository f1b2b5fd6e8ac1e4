"""Peak memory of the stages that read whole vector caches: merging shards and building the index.

    python benchmarks/memory.py [--rows 100000] [--dim 4096] [--parts 2] [--folder DIR] [--keep]

Writes ``--parts`` caches of ``--rows`` x ``--dim`` float32 vectors (generated and appended chunk by
chunk; about 1.6 GB each at the defaults) and a manifest naming every row as a shop photo, then runs
each step in its own process and reads that process's peak resident memory (``ru_maxrss`` from
``os.wait4``): ``embeddings.merge`` of the parts, and ``retrieval.build_index`` over the merged cache.
A process that only imports the same modules gives the baseline. Goals: merge under 1 GiB, index
build under 1.5 GiB, whatever the cache size. The data goes to a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embeddings import CacheWriter  # noqa: E402

GiB = 2**30
CATEGORIES = ("bags", "dresses", "footwear", "skirts", "tops")
ATTRS = {"backbone": "vgg19", "layer": "fc2", "weights": "random:0", "input_size": [224, 224]}

MERGE = "from embeddings import merge; import sys; merge(sys.argv[1:-1], sys.argv[-1])"
INDEX = "from retrieval import build_index; import sys; build_index(sys.argv[1], sys.argv[2], sys.argv[3])"
IMPORTS = {"merge": "import embeddings, embeddings.extraction.shards",
           "index build": "import retrieval, embeddings"}


def write_caches(folder: Path, parts: int, rows: int, dim: int, chunk: int = 2048) -> list[Path]:
    """``parts`` caches with distinct ids, random vectors appended ``chunk`` rows at a time, and a manifest."""
    rng = np.random.default_rng(0)
    paths = []
    with (folder / "manifest.jsonl").open("w") as manifest:
        for part in range(parts):
            path = folder / f"part{part}.h5"
            with CacheWriter(path, dict(ATTRS, dim=dim)) as writer:
                for start in range(0, rows, chunk):
                    numbers = range(part * rows + start, part * rows + min(rows, start + chunk))
                    ids = [f"shop/{n}.jpg" for n in numbers]
                    writer.append(ids, rng.random((len(ids), dim), dtype=np.float32))
                    for n, key in zip(numbers, ids):
                        manifest.write(json.dumps({"path": key, "kind": "shop", "photo": n, "product": n // 2,
                                                   "category": CATEGORIES[n % len(CATEGORIES)]}) + "\n")
            paths.append(path)
    return paths


def peak_of(code: str, *args: str) -> tuple[float, float]:
    """Run ``python -c code args`` in a child process; its peak resident memory in bytes, and its seconds."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"step failed with exit code {process.returncode}: {code}")
    return usage.ru_maxrss * 1024.0, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per part (default: 100000)")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--folder", type=Path, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the data")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="memory-bench-", dir=args.folder))
    try:
        start = time.perf_counter()
        parts = write_caches(folder, args.parts, args.rows, args.dim)
        size = sum(p.stat().st_size for p in parts)
        print(f"wrote {args.parts} caches of {args.rows} x {args.dim} float32 ({size / GiB:.2f} GiB) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        merged, index = folder / "merged.h5", folder / "index.h5"
        steps = [("merge", (MERGE, *map(str, parts), str(merged)), 1.0),
                 ("index build", (INDEX, str(merged), str(folder / "manifest.jsonl"), str(index)), 1.5)]
        rows = []
        for name, command, goal in steps:
            baseline, _ = peak_of(IMPORTS[name])
            peak, seconds = peak_of(*command)
            rows.append((name, peak, baseline, seconds, goal))
            print(f"{name}: peak {peak / GiB:.2f} GiB in {seconds:.0f} s", flush=True)
        print(f"\ninput: {args.parts} x {args.rows} x {args.dim} float32, merged cache "
              f"{merged.stat().st_size / GiB:.2f} GiB\n")
        print("| step | peak RSS | of which imports | wall | goal | met |\n| --- | --- | --- | --- | --- | --- |")
        for name, peak, baseline, seconds, goal in rows:
            print(f"| {name} | {peak / GiB:.2f} GiB | {baseline / GiB:.2f} GiB | {seconds:.0f} s | < {goal} GiB | "
                  f"{'yes' if peak < goal * GiB else 'NO'} |")
    finally:
        if args.keep:
            print(f"data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
