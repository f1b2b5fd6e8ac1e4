"""The search service under load: ``python -m retrieval.serve`` on 127.0.0.1 against the bare engine.

    python benchmarks/serve.py [--backbone mobilenet_v2] [--rows 20000] [--requests 16,48,96] [--concurrency 1,8,32]

One run: a generated index (``--rows`` shop photos in four categories, vectors of the backbone's size)
and generated street photos (640 x 480 JPEGs, a box each). In this process, the bare engine: one photo
decoded, embedded and ranked at a time (median), and the network alone on batches of ``--max-batch``
prepared photos (photos/s). Then the service in a subprocess, sent a bounded number of requests at each
concurrency from client threads: throughput, median and 99th-percentile latency, errors. Goals: no
errors; at concurrency 1 the median within 1.2x of the bare search; at the highest concurrency at least
0.9 of the bare network's batched throughput. The backbone runs with ``weights=None``, which costs what
the real weights cost.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from downloader.metadata import BBox  # noqa: E402
from retrieval import IndexData, SearchEngine, save_index  # noqa: E402
from retrieval.service.uploads import decode_photo  # noqa: E402
from retrieval.store import as_bytes  # noqa: E402

CATEGORIES = ("bags", "dresses", "footwear", "skirts")


def write_index(path: Path, describe: dict, rows: int) -> None:
    """``rows`` shop photos of random unit vectors of the backbone's dimension, four categories, 4 photos a product."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(rows, int(describe["dim"]))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = [CATEGORIES[i * len(CATEGORIES) // rows] for i in range(rows)]
    save_index(path, IndexData(vectors, as_bytes([f"shop/{i}.jpg" for i in range(rows)]), np.arange(rows),
                               np.arange(rows) // 4, as_bytes(categories), np.zeros(rows, np.int16),
                               {"backbone": describe, "head": None, "metric": "cosine", "roots": [str(path.parent)]}))


def street_photos(count: int) -> list[tuple[bytes, str, str]]:
    """``(jpeg, bbox, category)``: smooth random scenes, 640 x 480, a box round the middle."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    photos = []
    for n in range(count):
        a, b, c = rng.uniform(0.01, 0.06, size=3)
        pixels = np.stack([127 + 120 * np.sin(a * x + n), 127 + 120 * np.cos(b * y), 127 + 120 * np.sin(c * (x + y))], -1)
        stream = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(stream, "JPEG", quality=90)
        photos.append((stream.getvalue(), f"{160 + n % 40},{80 + n % 30},300,320", CATEGORIES[n % len(CATEGORIES)]))
    return photos


def bare(engine: SearchEngine, photos: list[tuple[bytes, str, str]], batch: int) -> tuple[float, float]:
    """Median seconds of one decode + embed + rank, and the network's photos/s on batches of ``batch``."""
    times = []
    for data, box, category in photos[:24]:
        started = time.perf_counter()
        image = decode_photo(data, BBox(*(float(v) for v in box.split(","))), 40_000_000)
        engine.search_embeddings(engine.embed_images([image]), 10, category)
        times.append(time.perf_counter() - started)
    inputs = np.stack([engine.extractor.prepare(Image.open(io.BytesIO(d))) for d, _, _ in photos[:batch]])
    engine.extractor.predict(inputs)
    started, rounds = time.perf_counter(), 6
    for _ in range(rounds):
        engine.extractor.predict(inputs)
    return statistics.median(times[4:]), rounds * batch / (time.perf_counter() - started)


def start_service(index: Path, max_batch: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "retrieval.serve", "--index", str(index), "--port", "0", "--log-level",
               "warning", "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("serving "):
            url = line.split(" at ")[1].split("/ ")[0]
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # drain
            return process, url
    raise RuntimeError(f"the service did not start (exit {process.wait()})")


def load(url: str, photos: list[tuple[bytes, str, str]], requests: int, concurrency: int) -> dict:
    """``requests`` searches from ``concurrency`` client threads, each with its own keep-alive connection."""
    import httpx

    local = threading.local()

    def one(number: int) -> tuple[float, bool]:
        if not hasattr(local, "client"):  # without Nagle's delay, as browsers send
            transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
            local.client = httpx.Client(base_url=url, timeout=300, transport=transport)
        data, box, category = photos[number % len(photos)]
        started = time.perf_counter()
        try:
            response = local.client.post("/api/search", files={"image": ("street.jpg", data, "image/jpeg")},
                                         data={"bbox": box, "category": category, "k": "10"})
            ok = response.status_code == 200 and len(response.json()["matches"]) == 10
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - started, ok

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm: connections, and the network at this batch size
        started = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    latencies = sorted(t for t, _ in results)
    return {"concurrency": concurrency, "requests": requests, "errors": sum(not ok for _, ok in results),
            "throughput": requests / wall, "median_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(np.ceil(0.99 * len(latencies))) - 1)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2", help="the network (default: mobilenet_v2)")
    parser.add_argument("--rows", type=int, default=20_000, help="shop photos in the index (default: 20000)")
    parser.add_argument("--concurrency", default="1,8,32", help="client threads (default: 1,8,32)")
    parser.add_argument("--requests", default="16,48,96", help="requests at each concurrency (default: 16,48,96)")
    parser.add_argument("--max-batch", type=int, default=16, help="the service's --max-batch (default: 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the service's --batch-wait-ms (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("bench-output/serve.json"), help="JSON results")
    args = parser.parse_args(argv)
    levels = [int(v) for v in args.concurrency.split(",")]
    counts = [int(v) for v in args.requests.split(",")]
    if len(levels) != len(counts):
        parser.error("--requests needs one count for each --concurrency")
    from embeddings import Extractor

    started = time.perf_counter()
    extractor = Extractor(args.backbone, None)
    photos = street_photos(48)
    with tempfile.TemporaryDirectory() as temp:
        index = Path(temp) / "index.h5"
        write_index(index, extractor.describe(), args.rows)
        engine = SearchEngine.load(index, extractor=extractor)
        bare_median, bare_throughput = bare(engine, photos, args.max_batch)
        print(f"{args.backbone} (weights=None), {args.rows} shop photos; bare engine: one search "
              f"{1000 * bare_median:.0f} ms median; network alone on batches of {args.max_batch}: "
              f"{bare_throughput:.1f} photos/s")
        process, url = start_service(index, args.max_batch, args.batch_wait_ms)
        try:
            rows = [load(url, photos, count, level) for level, count in zip(levels, counts)]
        finally:
            process.terminate()
            process.wait(60)
    print(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'photos/s':>9} {'median ms':>9} {'p99 ms':>7}")
    for row in rows:
        print(f"{row['concurrency']:>11} {row['requests']:>8} {row['errors']:>6} {row['throughput']:>9.1f} "
              f"{row['median_ms']:>9.0f} {row['p99_ms']:>7.0f}")
    latency_ratio = rows[0]["median_ms"] / (1000 * bare_median)
    throughput_ratio = rows[-1]["throughput"] / bare_throughput
    print(f"concurrency {levels[0]}: median {latency_ratio:.2f}x the bare search (goal <= 1.2); concurrency "
          f"{levels[-1]}: {throughput_ratio:.2f} of the bare network's batched throughput (goal >= 0.9); "
          f"errors {sum(r['errors'] for r in rows)}; wall {time.perf_counter() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"backbone": args.backbone, "rows": args.rows, "max_batch": args.max_batch,
                                    "bare_median_ms": 1000 * bare_median, "bare_batched_photos_per_s": bare_throughput,
                                    "service": rows, "latency_ratio": latency_ratio,
                                    "throughput_ratio": throughput_ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
