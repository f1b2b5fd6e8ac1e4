"""``python -m embeddings.build``: compute backbone vectors for the downloader's images, resumably."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common import LockHeld, ManifestError
from common.commands import share_name_with

from .extraction.backbones import BACKBONES, WeightsUnavailableError
from .extraction.cache import CacheError
from .extraction.distributor import ENGINES
from .extraction.pipeline import BuildConfig, build
from .extraction.precision import PRECISIONS
from .extraction.preprocess import DECODE_MODES, DEFAULT_DECODE


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


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How the build runs: decoding, precision, engine, locking."""
    parser.add_argument("--decode", choices=DECODE_MODES, default=DEFAULT_DECODE,
                        help="exact: decode every JPEG pixel; fast: let libjpeg decode photos at least twice the "
                             f"network input at 1/2, 1/4 or 1/8 scale (recorded in the cache; default: {DEFAULT_DECODE})")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="network compute precision (vectors are stored float32; recorded in the cache): "
                             "auto = bfloat16 on AMX / AVX512-BF16 CPUs and bf16 GPUs, float32 elsewhere")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: processes on this machine (default); ray: a Ray cluster (pip install -e '.[ray]')")
    parser.add_argument("--ray-address", default=None,
                        help="with --engine ray: auto or HOST:PORT joins a running cluster; "
                             "without it a local Ray instance is started")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="with --engine ray: GPUs per network actor (default: 1 where the cluster has GPUs)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes, or the CPUs of a local Ray (default: CPU count)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad manifest line instead of skipping it")
    parser.add_argument("--wait", action="store_true",
                        help="if another build is writing --out, wait for it instead of exiting with an error")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embeddings.build",
        description="Compute one backbone vector per image into an HDF5 cache. Resumable: rerun to "
                    "compute only the missing ids; Ctrl-C keeps every finished batch (exit 130).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="the downloader's manifest.jsonl (ids are its paths)")
    source.add_argument("--images", type=Path,
                        help="a plain folder of images; with one sub-folder per class, the class is stored as a label")
    parser.add_argument("--out", type=Path, required=True, help="the cache file, e.g. vectors.h5")
    add_backbone_arguments(parser)
    parser.add_argument("--model", type=Path, default=None,
                        help="a tower folder from python -m embeddings.finetune: embed with it instead of --backbone "
                             "(its identity is recorded in the cache; local engine, float32)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per network call (default: 32)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1),
                        help="I/N: build only part I (0-based) of N; join parts with python -m embeddings.merge")
    add_run_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = BuildConfig(out=args.out, manifest=args.manifest, images=args.images, backbone=args.backbone,
                         weights=args.weights, batch_size=args.batch_size, shard=args.shard,
                         workers=args.workers, progress=not args.quiet, decode=args.decode,
                         precision=args.precision, engine=args.engine, ray_address=args.ray_address,
                         gpus_per_worker=args.gpus_per_worker, strict=args.strict, wait=args.wait)
    try:
        extractor = None
        if args.model is not None:
            from .learning.tower_extractor import extractor_for_build

            extractor = extractor_for_build(args.model, config)
        summary = build(config, extractor=extractor)
    except (FileNotFoundError, ValueError, CacheError, WeightsUnavailableError, LockHeld, ManifestError,
            ConnectionError) as error:  # ConnectionError: no Ray cluster at --ray-address
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before any image was embedded; the cache is as it was", file=sys.stderr)
        return 130
    for line in summary.lines():
        print(line)
    return 130 if summary.interrupted else 0


share_name_with(__name__, build)


if __name__ == "__main__":
    sys.exit(main())
