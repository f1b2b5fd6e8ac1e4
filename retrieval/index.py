"""``python -m retrieval.index``: embed the shop photos' vectors with the head and write the index."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from embeddings.extraction.cache import CacheError

from .store import IndexFileError, build_index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.index",
        description="Build the search index of shop photos: their cached vectors passed through the trained head "
                    "(or raw, without --head), with photo, product, category and image path.")
    parser.add_argument("--vectors", type=Path, required=True, help="the vector cache (python -m embeddings.build)")
    parser.add_argument("--manifest", type=Path, required=True, help="the downloader's manifest.jsonl")
    parser.add_argument("--head", type=Path, help="the trained head folder (python -m embeddings.train)")
    parser.add_argument("--out", type=Path, required=True, help="the index file, e.g. index.h5")
    parser.add_argument("--categories", nargs="+", help="only these categories")
    parser.add_argument("--add", action="store_true",
                        help="append the shop photos not yet in OUT (same backbone and head), without a rebuild")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        index, added = build_index(args.vectors, args.manifest, args.out, args.head, args.categories, args.add)
    except (FileNotFoundError, ValueError, CacheError, IndexFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{name} {stop - start}" for name, (start, stop) in index.category_slices().items())
    made = "head " + index.attrs["head"]["identity"] if index.attrs["head"] else "raw vectors (no head)"
    print(f"index {args.out}: {len(index)} shop photos ({added} added; {counts}); {made}; "
          f"metric {index.attrs['metric']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
