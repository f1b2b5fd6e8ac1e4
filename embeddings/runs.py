"""``python -m embeddings.runs DIR [DIR ...]``: a Markdown table comparing training runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .learning.run_table import COLUMNS, NotARunError, markdown_table, read_run, sort_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embeddings.runs",
        description="Print a Markdown table with a row per run folder of embeddings.train or embeddings.finetune: "
                    "backbone, trainable share, augmentation, dropout, loss (mining), margin, dim, epochs run, "
                    "best validation pair accuracy, and validation top-1/top-10 of the kept (best) epoch.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="run folders (OUT of either command)")
    parser.add_argument("--sort", choices=COLUMNS, default=None,
                        help="sort by this column: numbers largest first, text in order")
    args = parser.parse_args(argv)
    try:
        rows = [read_run(folder) for folder in args.runs]
    except NotARunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(sort_rows(rows, args.sort) if args.sort else rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
