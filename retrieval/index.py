"""``python -m retrieval.index``: embed the shop photos' vectors with the head and write the index; remove products."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from common import LockHeld, ManifestError
from embeddings.extraction.cache import CacheError

from .store import IndexData, IndexFileError
from .tuning import AnnConfig, parse_memory
from .writer import build_index, remove_products


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.index",
        description="Build the search index of shop photos: their cached vectors passed through the trained head "
                    "(or raw, without --head), with photo, product, category and image path; exact, or approximate "
                    "with FAISS (--ann). With --remove-products, remove products from an existing index in place.")
    parser.add_argument("--vectors", type=Path, help="the vector cache (python -m embeddings.build)")
    parser.add_argument("--manifest", type=Path, help="the downloader's manifest.jsonl")
    parser.add_argument("--head", type=Path, help="the trained head folder (python -m embeddings.train)")
    parser.add_argument("--out", type=Path, required=True, help="the index file, e.g. index.h5")
    parser.add_argument("--categories", nargs="+", help="only these categories")
    parser.add_argument("--add", action="store_true",
                        help="append the shop photos not yet in OUT (same backbone and head), without a rebuild; "
                             "an approximate index gets them without retraining")
    parser.add_argument("--ann", default="exact",
                        help="exact (default: today's exact ranker), auto (choose under --max-memory: exact when "
                             "small, HNSW while vectors and graph fit, IVF with product quantisation when not), "
                             "or a FAISS factory string such as HNSW32 or IVF4096,PQ32; tuned to --target-recall")
    parser.add_argument("--max-memory", default="4G", help="memory the approximate index may take (default: 4G)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="recall@10 against exact search that tuning must reach (default: 0.95)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                        help="how embeddings are stored: float16 halves the memory of raw 4096-d vectors")
    parser.add_argument("--remove-products", help="comma-separated product ids to remove from OUT (no rebuild)")
    parser.add_argument("--remove-products-file", type=Path, help="a file of product ids to remove, one a line")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad manifest line")
    parser.add_argument("--wait", action="store_true", help="wait for another run writing OUT instead of failing")
    return parser


def _products(args: argparse.Namespace) -> list[int]:
    """The product ids of --remove-products and --remove-products-file (ValueError naming a bad one)."""
    texts = [t for t in (args.remove_products or "").split(",") if t.strip()]
    if args.remove_products_file is not None:
        if not args.remove_products_file.is_file():
            raise FileNotFoundError(f"{args.remove_products_file}: product list does not exist")
        lines = args.remove_products_file.read_text(encoding="utf-8").splitlines()
        texts += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    try:
        return [int(text) for text in texts]
    except ValueError:
        bad = next(t for t in texts if not t.strip().lstrip("-").isdigit())
        raise ValueError(f"product id {bad.strip()!r} is not an integer") from None


def describe(index: IndexData) -> str:
    counts = ", ".join(f"{name} {stop - start}" for name, (start, stop) in index.category_slices().items())
    made = "head " + index.attrs["head"]["identity"] if index.attrs["head"] else "raw vectors (no head)"
    lines = [f"{len(index)} shop photos ({counts}); {made}; metric {index.attrs['metric']}; "
             f"{index.attrs.get('dtype', 'float32')}"]
    for category, info in sorted((index.attrs.get("ann") or {}).items()):
        lines.append(f"  {category}: {info['factory']} {info['param']}={info['value']}: recall@10 {info['recall']:.3f} "
                     f"on {info['tune_queries']} held-out rows, {info['query_ms']:.3f} ms a query"
                     + (f", {info['removed_rows']} rows removed" if info.get("removed_rows") else ""))
    exact = [c for c in index.category_slices() if c not in (index.attrs.get("ann") or {})]
    if index.attrs.get("ann") and exact:
        lines.append(f"  exact: {', '.join(exact)} (small)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    removing = args.remove_products is not None or args.remove_products_file is not None
    if not removing and (args.vectors is None or args.manifest is None):
        parser.error("--vectors and --manifest are required to build or add (or pass --remove-products)")
    began = time.perf_counter()
    try:
        if removing:
            index, removed = remove_products(args.out, _products(args), wait=args.wait)
            done = f"{removed} photos removed"
        else:
            config = AnnConfig(args.ann, parse_memory(args.max_memory), args.target_recall)
            index, added = build_index(args.vectors, args.manifest, args.out, args.head, args.categories, args.add,
                                       strict=args.strict, ann=config, dtype=args.dtype, wait=args.wait)
            done = f"{added} added"
    except (FileNotFoundError, ValueError, CacheError, IndexFileError, ManifestError, LockHeld) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"index {args.out} ({done} in {time.perf_counter() - began:.1f} s): {describe(index)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
