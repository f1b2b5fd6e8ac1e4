"""The search service under load: ``python -m retrieval.serve`` on 127.0.0.1 against the bare engine.

    python benchmarks/serve.py [--backbone mobilenet_v2] [--rows 20000] [--requests 24,48,96] [--concurrency 1,8,32]

One run: a generated index (``--rows`` shop photos in four categories, vectors of the backbone's size)
and generated street photos (640 x 480 JPEGs, a box each); the service in a subprocess. Concurrency 1:
each request beside the same photo decoded, embedded and ranked in this process (medians, paired so
that the machine's load drifts on both). Higher concurrency: bursts of requests from client threads,
each burst beside the network alone on a batch of ``--max-batch`` prepared photos. Throughput, median
and 99th-percentile latency, errors. Goals: no errors; at concurrency 1 the median within 1.2x of the
bare search; at the highest concurrency at least 0.9 of the bare network's batched throughput. The
backbone runs with ``weights=None``, which costs what the real weights cost.
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


def bare_search(engine: SearchEngine, photo: tuple[bytes, str, str]) -> float:
    """Seconds for one photo decoded, embedded and ranked in this process."""
    data, box, category = photo
    started = time.perf_counter()
    image = decode_photo(data, BBox(*(float(v) for v in box.split(","))), 40_000_000)
    engine.search_embeddings(engine.embed_images([image]), 10, category)
    return time.perf_counter() - started


def bare_network(engine: SearchEngine, inputs: np.ndarray, rounds: int = 3) -> float:
    """The network alone: photos/s on batches of prepared inputs."""
    started = time.perf_counter()
    for _ in range(rounds):
        engine.extractor.predict(inputs)
    return rounds * len(inputs) / (time.perf_counter() - started)


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


def client(url: str):
    """A keep-alive client without Nagle's delay, as browsers send."""
    import httpx

    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=url, timeout=300, transport=transport)


def ask(session, photo: tuple[bytes, str, str]) -> tuple[float, bool]:
    """One search request: seconds and whether it answered ten matches."""
    import httpx

    data, box, category = photo
    started = time.perf_counter()
    try:
        response = session.post("/api/search", files={"image": ("street.jpg", data, "image/jpeg")},
                                data={"bbox": box, "category": category, "k": "10"})
        ok = response.status_code == 200 and len(response.json()["matches"]) == 10
    except httpx.HTTPError:
        ok = False
    return time.perf_counter() - started, ok


def burst(url: str, photos: list[tuple[bytes, str, str]], requests: int, concurrency: int) -> dict:
    """``requests`` searches from ``concurrency`` client threads, each with its own connection."""
    local = threading.local()

    def one(number: int) -> tuple[float, bool]:
        if not hasattr(local, "session"):
            local.session = client(url)
        return ask(local.session, photos[number % len(photos)])

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm: connections, and the network at this batch size
        started = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    return {"times": [t for t, _ in results], "errors": sum(not ok for _, ok in results), "wall": wall}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))]


def level(engine: SearchEngine, url: str, photos: list, inputs: np.ndarray, requests: int, concurrency: int,
          rounds: int) -> dict:
    """Service bursts at one concurrency, each round next to the bare network, so load drift hits both."""
    times, errors, ratios, rates = [], 0, [], []
    for _ in range(rounds):
        network = bare_network(engine, inputs, 2)
        result = burst(url, photos, requests // rounds, concurrency)
        times += result["times"]
        errors += result["errors"]
        rates.append(len(result["times"]) / result["wall"])
        ratios.append(rates[-1] / network)
    return {"concurrency": concurrency, "requests": len(times), "errors": errors,
            "throughput": statistics.median(rates), "median_ms": 1000 * statistics.median(times),
            "p99_ms": 1000 * percentile(times, 0.99), "of_bare_network": statistics.median(ratios)}


def single(engine: SearchEngine, url: str, photos: list, requests: int) -> dict:
    """Concurrency 1, each request next to the same search done bare: a paired comparison."""
    session = client(url)
    ask(session, photos[0])
    bare_search(engine, photos[0])
    service, alone, errors = [], [], 0
    for number in range(requests):
        alone.append(bare_search(engine, photos[number % len(photos)]))
        seconds, ok = ask(session, photos[number % len(photos)])
        service.append(seconds)
        errors += not ok
    return {"concurrency": 1, "requests": requests, "errors": errors, "throughput": requests / sum(service),
            "median_ms": 1000 * statistics.median(service), "p99_ms": 1000 * percentile(service, 0.99),
            "bare_median_ms": 1000 * statistics.median(alone),
            "of_bare_search": statistics.median(service) / statistics.median(alone)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2", help="the network (default: mobilenet_v2)")
    parser.add_argument("--rows", type=int, default=20_000, help="shop photos in the index (default: 20000)")
    parser.add_argument("--concurrency", default="1,8,32", help="client threads (default: 1,8,32)")
    parser.add_argument("--requests", default="24,48,96", help="requests at each concurrency (default: 24,48,96)")
    parser.add_argument("--max-batch", type=int, default=16, help="the service's --max-batch (default: 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the service's --batch-wait-ms (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per concurrency, each beside the bare "
                                                                "network (default: 3)")
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
        inputs = np.stack([extractor.prepare(Image.open(io.BytesIO(d))) for d, _, _ in photos[:args.max_batch]])
        bare_network(engine, inputs, 1)
        process, url = start_service(index, args.max_batch, args.batch_wait_ms)
        try:
            rows = [single(engine, url, photos, count) if concurrency == 1 else
                    level(engine, url, photos, inputs, count, concurrency, args.rounds)
                    for concurrency, count in zip(levels, counts)]
        finally:
            process.terminate()
            process.wait(60)
    print(f"{args.backbone} (weights=None), {args.rows} shop photos, --max-batch {args.max_batch}")
    print(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'photos/s':>9} {'median ms':>9} {'p99 ms':>7}  vs bare")
    for row in rows:
        versus = (f"{row['of_bare_search']:.2f}x the bare search ({row['bare_median_ms']:.0f} ms)"
                  if "of_bare_search" in row else f"{row['of_bare_network']:.2f} of the bare network's photos/s")
        print(f"{row['concurrency']:>11} {row['requests']:>8} {row['errors']:>6} {row['throughput']:>9.1f} "
              f"{row['median_ms']:>9.0f} {row['p99_ms']:>7.0f}  {versus}")
    print(f"goals: concurrency 1 within 1.2x of the bare search; concurrency {levels[-1]} at least 0.9 of the bare "
          f"network; no errors (errors: {sum(r['errors'] for r in rows)}). Wall {time.perf_counter() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"backbone": args.backbone, "rows": args.rows, "max_batch": args.max_batch,
                                    "levels": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
