"""Downloader throughput against a plain sequential loop, over a loopback server with 50 ms latency.

    python benchmarks/download.py [--images 1000] [--latency 0.05]

Both download the same generated images (street photos cropped to a box) in one run; prints images/s
of each and the ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.server import LoopbackServer, Route  # noqa: E402
from downloader import DownloadConfig, download  # noqa: E402

BOX = {"left": 20, "top": 10, "width": 120, "height": 150}


def make_routes(count: int) -> dict[str, Route]:
    rng = np.random.default_rng(0)
    routes = {}
    for index in range(count):
        stream = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(200, 160, 3), dtype=np.uint8)).save(stream, "JPEG", quality=85)
        routes[f"/{index}.jpg"] = Route(stream.getvalue())
    return routes


def serve(count: int, latency: float, ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    """Run the server in its own process, as a remote host would be: it must not take our CPU."""
    with LoopbackServer(make_routes(count), latency=latency) as server:
        ready.put(server.base_url)
        stop.wait()


def sequential(urls: dict[int, str], out: Path) -> None:
    """What the research scripts did: get, open, crop, save, one after another."""
    out.mkdir(parents=True, exist_ok=True)
    for photo, url in urls.items():
        response = requests.get(url, timeout=10)
        image = Image.open(io.BytesIO(response.content)).convert("RGB")
        box = (BOX["left"], BOX["top"], BOX["left"] + BOX["width"], BOX["top"] + BOX["height"])
        image.crop(box).save(out / f"{photo}.jpg", quality=95)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every reply")
    args = parser.parse_args(argv)
    ready, stop = multiprocessing.Queue(), multiprocessing.Event()
    host = multiprocessing.Process(target=serve, args=(args.images, args.latency, ready, stop), daemon=True)
    host.start()
    base_url = ready.get(timeout=60)
    try:
        with tempfile.TemporaryDirectory() as temp:
            root = Path(temp)
            urls = {index: f"{base_url}/{index}.jpg" for index in range(args.images)}
            (root / "photos.txt").write_text("".join(f"{i:09d},{u}\n" for i, u in urls.items()))
            (root / "meta").mkdir()
            (root / "meta" / "train_pairs_tops.json").write_text(
                json.dumps([{"photo": i, "product": i, "bbox": BOX} for i in urls]))

            start = time.perf_counter()
            summary = download(DownloadConfig(meta=root / "meta", photos=root / "photos.txt", out=root / "out"))
            ours = time.perf_counter() - start
            assert summary.saved == args.images, summary.lines()

            start = time.perf_counter()
            sequential(urls, root / "plain")
            plain = time.perf_counter() - start
    finally:
        stop.set()
        host.join(timeout=10)

    print(f"images: {args.images}, latency: {args.latency * 1000:.0f} ms per request")
    print(f"downloader (16 workers): {args.images / ours:8.1f} images/s")
    print(f"sequential loop:         {args.images / plain:8.1f} images/s")
    print(f"ratio: {plain / ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
