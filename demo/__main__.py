"""``python -m demo``: run the pipeline on a generated Street2Shop sample served from 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from downloader import DownloadConfig, FetchConfig, download

from .sample import SAMPLE_CATEGORIES, make_sample, write_photos_txt
from .server import LoopbackServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Make a small synthetic Street2Shop sample, serve it on 127.0.0.1 and run the pipeline on it.")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="working folder (default: demo-output)")
    return parser


def run_download(root: Path, out: Path) -> None:
    with LoopbackServer(root=root) as server:
        photos = write_photos_txt(root, server.base_url)
        print(f"== download: serving the sample at {server.base_url}")
        summary = download(DownloadConfig(meta=root / "meta", photos=photos, out=out / "images",
                                          categories=SAMPLE_CATEGORIES, workers=8, progress=True,
                                          fetch=FetchConfig(timeout=5, retries=1, backoff=0.05)))
    for line in summary.lines():
        print(line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    root = args.out / "sample"
    if not (root / "ids.json").exists():
        print(f"== sample: generating synthetic Street2Shop data in {root}")
        make_sample(root)
    run_download(root, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
