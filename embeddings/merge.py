"""``python -m embeddings.merge``: join caches built as shards into one, checking that they agree."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common import LockHeld
from common.commands import share_name_with

from .extraction.shards import merge


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embeddings.merge",
        description="Join vector caches built with --shard I/N into one file. The parts must agree on backbone, "
                    "layer, weights, input size, precision and decode mode; the first occurrence of an id wins. "
                    "Copies chunk by chunk (memory does not grow with the caches) and writes OUT atomically.")
    parser.add_argument("parts", nargs="+", type=Path, help="the shard caches")
    parser.add_argument("--out", type=Path, required=True, help="the merged cache (a new file)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for another run writing OUT or a part to finish, instead of failing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        summary = merge(args.parts, args.out, wait=args.wait, progress=not args.quiet)
    except (OSError, ValueError, LockHeld) as error:  # FileNotFoundError and CacheError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} was not written", file=sys.stderr)
        return 130
    print(f"merged {len(args.parts)} parts: {summary.rows} vectors into {args.out}"
          + (f" ({summary.duplicates} duplicate ids skipped)" if summary.duplicates else ""))
    return 0



share_name_with(__name__, merge)

if __name__ == "__main__":
    sys.exit(main())
