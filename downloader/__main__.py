"""``python -m downloader``: fetch Street2Shop photos and crop street photos to their boxes."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from pathlib import Path

from PIL import Image

from common import LockHeld

from .download import DownloadConfig, download
from .fetch import FetchConfig
from .metadata import CATEGORIES, SPLITS


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):  # inf and nan: a traceback or a run where every fetch fails
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own prints the usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m downloader",
        description="Download Street2Shop photos: street photos are saved once per box, cropped to it "
        "(OUT/street/<photo>_<product>_<k>.jpg); shop photos whole (OUT/shop/<photo>.jpg). "
        "Writes OUT/manifest.jsonl and OUT/failures.jsonl. Rerunning resumes: images on disk are skipped.",
        epilog="Photos come from --photos (URLs), --photos-dir or --photos-archive; with a local mirror and "
        "--photos too, photos missing from the mirror are fetched from their URL. Ctrl-C finishes the photos "
        "in flight and exits 130; a second Ctrl-C abandons them.",
    )
    where = parser.add_argument_group("where the photos are (one or more)")
    where.add_argument("--photos", type=Path, help="photos.txt: '<id>,<url>' per line (http, https or file URLs)")
    where.add_argument("--photos-dir", type=Path, metavar="DIR",
                       help="a mirror folder of files named by photo id (000000123.jpg or 123.png), "
                       "in DIR or one sub-folder down")
    where.add_argument("--photos-archive", type=Path, metavar="FILE",
                       help="the same names inside a .tar, .tar.gz or .zip, read without unpacking")
    where.add_argument("--mirror", metavar="URL",
                       help="replace scheme and host of every photos.txt URL with URL's, keeping the path")
    parser.add_argument("--meta", required=True, type=Path,
                        help="metadata folder: the dataset root, meta/ or meta/json/ (with *_pairs_<category>.json)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--categories", type=_names, default=CATEGORIES,
                        help="comma-separated categories (default: all 11)")
    parser.add_argument("--splits", type=_names, default=SPLITS, help="comma-separated: train,test (default: both)")
    parser.add_argument("--no-shop", action="store_true", help="street photos only, skip retrieval (shop) photos")
    parser.add_argument("--retry-failed", action="store_true", help="try again the photos that failed before")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad metadata entry")
    parser.add_argument("--wait", action="store_true", help="if another run is writing OUT, wait for it (else exit 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    polite = parser.add_argument_group("fetching")
    polite.add_argument("--workers", type=int, default=16, help="photos worked on at once (default: 16)")
    polite.add_argument("--per-host", type=int, default=4, help="most requests in flight to one host (default: 4)")
    polite.add_argument("--timeout", type=_finite, default=10.0, help="seconds per request (default: 10)")
    polite.add_argument("--retries", type=int, default=3,
                        help="retries on timeouts, connection errors and 5xx, never on 4xx; also the most "
                        "Retry-After waits per photo (default: 3)")
    polite.add_argument("--max-wait", type=_finite, default=300.0,
                        help="longest Retry-After (429/503) honoured, in seconds; longer is a failure, and that "
                        "host's other photos are not requested in this run (default: 300)")
    polite.add_argument("--give-up-after", type=int, default=10, metavar="N",
                        help="stop asking a host that could not be reached (connection errors, timeouts) for N "
                        "photos in a row; its other photos fail as 'not requested' (0: never; default: 10)")
    polite.add_argument("--max-mb", type=_finite, default=30.0, help="largest photo accepted, in MB (default: 30)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # images.decode refuses such images with a recorded reason; Pillow's own warning would only add noise,
    # as would its warnings about a photo's damaged EXIF (read as far as it goes, two lines a photo)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    try:
        config = DownloadConfig(
            meta=args.meta, photos=args.photos, out=args.out, photos_dir=args.photos_dir,
            photos_archive=args.photos_archive, mirror=args.mirror, categories=args.categories, splits=args.splits,
            workers=args.workers, per_host=args.per_host, max_wait=args.max_wait, give_up_after=args.give_up_after,
            retry_failed=args.retry_failed, strict=args.strict, shop=not args.no_shop, progress=not args.quiet,
            wait=args.wait,
            fetch=FetchConfig(timeout=args.timeout, retries=args.retries, max_bytes=int(args.max_mb * 1024 * 1024)),
        )
        summary = download(config)
    except (OSError, ValueError, LockHeld) as error:  # ValueError covers MetadataError, ArchiveError, RecordError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130
    for line in summary.lines():
        print(line)
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
