"""``python -m downloader``: fetch Street2Shop photos and crop street photos to their boxes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .download import DownloadConfig, download
from .fetch import FetchConfig
from .metadata import CATEGORIES, SPLITS, MetadataError


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m downloader",
        description="Download Street2Shop photos: street photos are saved once per box, cropped to it "
        "(OUT/street/<photo>_<product>_<k>.jpg); shop photos whole (OUT/shop/<photo>.jpg). "
        "Writes OUT/manifest.jsonl and OUT/failures.jsonl. Rerunning resumes: images on disk are skipped.",
    )
    parser.add_argument("--meta", required=True, type=Path,
                        help="metadata folder: the dataset root, meta/ or meta/json/ (with *_pairs_<category>.json)")
    parser.add_argument("--photos", required=True, type=Path, help="photos.txt: '<id>,<url>' per line")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--categories", type=_names, default=CATEGORIES,
                        help="comma-separated categories (default: all 11)")
    parser.add_argument("--splits", type=_names, default=SPLITS, help="comma-separated: train,test (default: both)")
    parser.add_argument("--no-shop", action="store_true", help="street photos only, skip retrieval (shop) photos")
    parser.add_argument("--workers", type=int, default=16, help="concurrent downloads (default: 16)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries on timeouts, connection errors and 5xx, never on 4xx (default: 3)")
    parser.add_argument("--max-mb", type=float, default=30.0, help="largest body accepted, in MB (default: 30)")
    parser.add_argument("--retry-failed", action="store_true", help="try again the photos that failed before")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad metadata entry")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = DownloadConfig(
        meta=args.meta, photos=args.photos, out=args.out, categories=args.categories, splits=args.splits,
        workers=args.workers, retry_failed=args.retry_failed, strict=args.strict, shop=not args.no_shop,
        progress=not args.quiet,
        fetch=FetchConfig(timeout=args.timeout, retries=args.retries, max_bytes=int(args.max_mb * 1024 * 1024)),
    )
    try:
        summary = download(config)
    except (FileNotFoundError, ValueError, MetadataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
