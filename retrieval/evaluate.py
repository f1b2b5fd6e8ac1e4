"""``python -m retrieval.evaluate``: the Street2Shop paper's top-k accuracy, raw vectors beside the head."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common import ManifestError
from common.commands import share_name_with
from embeddings.extraction.cache import CacheError

from .topk import KS, evaluate, write_report
from .store import IndexFileError


def _ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,5,10, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.evaluate",
        description="For each street crop of the split, is a shop photo of its product among the top k shop photos "
                    "of its category? Per category and overall, raw backbone vectors beside the trained head. "
                    "Prints a table; writes OUT/metrics.json and OUT/topk.png.")
    parser.add_argument("--index", type=Path, required=True, help="the index (python -m retrieval.index)")
    parser.add_argument("--vectors", type=Path, required=True, help="the vector cache of the street crops")
    parser.add_argument("--manifest", type=Path, required=True, help="the downloader's manifest.jsonl")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="which street crops (default: test)")
    parser.add_argument("--ks", type=_ks, default=KS,
                        help="comma-separated k values (default: 1,5,10,20,50)")
    parser.add_argument("--head", type=Path, help="the head folder, if it moved since the index was built")
    parser.add_argument("--out", type=Path, default=Path("report"), help="report folder (default: report)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad manifest line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if not args.ks or min(args.ks) < 1:
            raise ValueError(f"--ks must be positive integers, got {args.ks}")
        report = evaluate(args.index, args.vectors, args.manifest, args.split, args.ks, args.head, args.strict)
    except (FileNotFoundError, ValueError, CacheError, IndexFileError, ManifestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.table())
    metrics, plot = write_report(report, args.out)
    print(f"wrote {metrics} and {plot}")
    return 0


share_name_with(__name__, evaluate)


if __name__ == "__main__":
    sys.exit(main())
