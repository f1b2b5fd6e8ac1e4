"""Downloader throughput: over HTTP against a plain sequential loop, and from a local mirror (a folder, a .tar.gz).

    python benchmarks/download.py [--images 1000] [--latency 0.05] [--hosts 4]

All download the same generated images (street photos cropped to a box) in one run. The HTTP path
spreads the photos over ``--hosts`` loopback servers with ``--latency`` seconds added to every reply,
as the real URLs spread over many hosts (the downloader's defaults: 16 workers, 4 per host). Prints
images/s of each and the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import sys
import tarfile
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


def serve(count: int, latency: float, hosts: int, ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    """Run the servers in their own process, as remote hosts would be: they must not take our CPU."""
    routes = make_routes(count)
    servers = [LoopbackServer(routes, latency=latency).start() for _ in range(hosts)]
    ready.put([server.base_url for server in servers])
    stop.wait()
    for server in servers:
        server.stop()


def timed(config: DownloadConfig, count: int) -> float:
    start = time.perf_counter()
    summary = download(config)
    seconds = time.perf_counter() - start
    assert summary.saved == count, summary.lines()
    return seconds


def write_mirror(routes: dict[str, Route], root: Path) -> tuple[Path, Path]:
    """The photos as a mirror folder (zero-padded names) and as a .tar.gz of it."""
    folder = root / "mirror"
    folder.mkdir()
    for path, route in routes.items():
        (folder / f"{int(path.strip('/').split('.')[0]):09d}.jpg").write_bytes(route.body)
    archive = root / "mirror.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(folder, arcname="photos")
    return folder, archive


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
    parser.add_argument("--hosts", type=int, default=4, help="loopback servers the URLs are spread over")
    args = parser.parse_args(argv)
    ready, stop = multiprocessing.Queue(), multiprocessing.Event()
    host = multiprocessing.Process(target=serve, args=(args.images, args.latency, args.hosts, ready, stop),
                                   daemon=True)
    host.start()
    base_urls = ready.get(timeout=120)
    count = args.images
    try:
        with tempfile.TemporaryDirectory() as temp:
            root = Path(temp)
            urls = {index: f"{base_urls[index % len(base_urls)]}/{index}.jpg" for index in range(count)}
            (root / "photos.txt").write_text("".join(f"{i:09d},{u}\n" for i, u in urls.items()))
            (root / "meta").mkdir()
            (root / "meta" / "train_pairs_tops.json").write_text(
                json.dumps([{"photo": i, "product": i, "bbox": BOX} for i in urls]))
            folder, archive = write_mirror(make_routes(count), root)
            meta = root / "meta"

            ours = timed(DownloadConfig(meta=meta, photos=root / "photos.txt", out=root / "http"), count)
            local = timed(DownloadConfig(meta=meta, photos_dir=folder, out=root / "folder"), count)
            packed = timed(DownloadConfig(meta=meta, photos_archive=archive, out=root / "archive"), count)
            start = time.perf_counter()
            sequential(urls, root / "plain")
            plain = time.perf_counter() - start
    finally:
        stop.set()
        host.join(timeout=10)

    print(f"images: {count}, latency: {args.latency * 1000:.0f} ms per request, {args.hosts} hosts")
    print(f"downloader over HTTP (16 workers, 4 per host): {count / ours:8.1f} images/s")
    print(f"sequential loop over HTTP:                     {count / plain:8.1f} images/s")
    print(f"downloader from a folder:                      {count / local:8.1f} images/s")
    print(f"downloader from a .tar.gz:                     {count / packed:8.1f} images/s")
    print(f"ratios: HTTP {plain / ours:.1f}x the sequential loop; folder {ours / local:.1f}x HTTP; "
          f".tar.gz {ours / packed:.1f}x HTTP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
