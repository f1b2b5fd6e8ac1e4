"""``python -m embeddings.build``: compute backbone vectors for the downloader's images, resumably."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .extraction.backbones import BACKBONES, WeightsUnavailableError
from .extraction.pipeline import BuildConfig, build
from .extraction.cache import CacheError


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    return index, count


def parse_weights(text: str) -> str | None:
    return None if text.lower() == "none" else text


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="vgg19", choices=sorted(BACKBONES),
                        help="network: vgg19 (fc2, 4096-d, default), vgg16 (fc2), resnet50 (2048-d), mobilenet_v2 (1280-d)")
    parser.add_argument("--weights", type=parse_weights, default="imagenet",
                        help="imagenet (Keras downloads them once), none (seeded random: smoke runs), "
                             "or PATH to a local weights file of the full model (machines without internet)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embeddings.build",
        description="Compute one backbone vector per image into an HDF5 cache. Resumable: rerun to "
                    "compute only the missing ids.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="the downloader's manifest.jsonl (ids are its paths)")
    source.add_argument("--images", type=Path,
                        help="a plain folder of images; with one sub-folder per class, the class is stored as a label")
    parser.add_argument("--out", type=Path, required=True, help="the cache file, e.g. vectors.h5")
    add_backbone_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="images per network call (default: 32)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1),
                        help="I/N: build only part I (0-based) of N; join parts with python -m embeddings.merge")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = BuildConfig(out=args.out, manifest=args.manifest, images=args.images, backbone=args.backbone,
                         weights=args.weights, batch_size=args.batch_size, shard=args.shard,
                         workers=args.workers, progress=not args.quiet)
    try:
        summary = build(config)
    except (FileNotFoundError, ValueError, CacheError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
