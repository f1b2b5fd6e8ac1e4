"""``python -m embeddings.merge``: join caches built as shards into one, checking that they agree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .extraction.shards import merge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embeddings.merge",
                                     description="Join vector caches built with --shard I/N into one file.")
    parser.add_argument("parts", nargs="+", type=Path, help="the shard caches")
    parser.add_argument("--out", type=Path, required=True, help="the merged cache")
    args = parser.parse_args(argv)
    try:
        merged = merge(args.parts, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"merged {len(args.parts)} parts: {len(merged.ids)} vectors into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
