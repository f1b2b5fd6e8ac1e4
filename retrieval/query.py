"""``python -m retrieval.query photo.jpg``: the ten shop products that look most like a street photo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from PIL import Image

from downloader.images import ImageError
from downloader.metadata import BBox
from embeddings.extraction.backbones import WeightsUnavailableError
from embeddings.extraction.cache import CacheError
from embeddings.extraction.preprocess import to_pil

from .engine import SearchEngine
from .store import IndexFileError

EXIT_INPUT, EXIT_INDEX = 2, 3


def parse_bbox(text: str) -> BBox:
    try:
        left, top, width, height = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LEFT,TOP,WIDTH,HEIGHT in pixels, got {text!r}") from None
    if width <= 0 or height <= 0 or left < 0 or top < 0:
        raise argparse.ArgumentTypeError(f"box {text!r}: width and height must be positive, left and top >= 0")
    return BBox(left, top, width, height)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.query",
        description="Find the shop products that look most like a street photo. Prints rank, product, "
                    "shop photo, distance and a same-item score in [0, 1]; each product once, at its best photo.")
    parser.add_argument("photo", type=Path, help="the street photo (JPEG, PNG, ...)")
    parser.add_argument("--index", type=Path, default=Path("index.h5"), help="the index (default: index.h5)")
    parser.add_argument("--bbox", type=parse_bbox, help="LEFT,TOP,WIDTH,HEIGHT: cut the photo to this box first")
    parser.add_argument("--category", help="rank only shop photos of this category (e.g. dresses)")
    parser.add_argument("-k", type=int, default=10, help="how many products (default: 10)")
    parser.add_argument("--head", type=Path, help="the head folder, if it moved since the index was built")
    parser.add_argument("--weights", help="the backbone weights file, if the index was built from one")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per match")
    parser.add_argument("--sheet", type=Path, help="also write a PNG contact sheet of the query and its matches")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.k < 1:
        print(f"error: -k must be at least 1, got {args.k}", file=sys.stderr)
        return EXIT_INPUT
    try:
        query = to_pil(args.photo, args.bbox)  # check the photo before loading any network
    except (FileNotFoundError, ImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # whatever the decoder did not map
        print(f"error: {args.photo}: unreadable image ({str(error).splitlines()[0][:160] or type(error).__name__})",
              file=sys.stderr)
        return EXIT_INPUT
    try:
        engine = SearchEngine.load(args.index, head=args.head, weights=args.weights)
        matches = engine.search(query, k=args.k, category=args.category)
    except (FileNotFoundError, IndexFileError, CacheError, WeightsUnavailableError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INDEX
    if args.json:
        print(json.dumps([m.to_dict() for m in matches], indent=2))
    else:
        print(f"{'rank':>4}  {'product':>8}  {'distance':>8}  {'score':>5}  shop photo")
        for m in matches:
            print(f"{m.rank:>4}  {m.product:>8}  {m.distance:8.4f}  {m.score:5.2f}  {m.path}")
    if args.sheet:
        from .sheet import contact_sheet

        contact_sheet(query, matches, args.sheet)
        if not args.json:
            print(f"contact sheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
