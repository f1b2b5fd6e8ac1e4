"""``python -m embeddings.finetune``: train the whole tower (backbone top + head) on pixels, or a small CNN
from scratch (Fashion-MNIST), with the losses and samplers of ``embeddings.train``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common import LockHeld
from common.commands import share_name_with

from .extraction.backbones import WeightsUnavailableError
from .learning.fashion_mnist import DownloadError
from .learning.finetuning import KERAS_DATASET, FinetuneConfig, finetune
from .learning.head import HeadConfig
from .learning.losses import MINING
from .learning.tower import TOWER_BACKBONES, TowerConfig
from .train import parse_sizes


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 160x120 (height x width), got {text!r}")
    return (parts[0], parts[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embeddings.finetune",
        description="Train a Siamese tower end to end on images: a pre-trained backbone with the top share of its "
                    "layers unfrozen (BatchNorm frozen) and a head on top, or small-cnn from scratch. Writes "
                    "OUT/model.keras, config.json, history.json, training.png as one folder at the end; after every "
                    "epoch a checkpoint is kept in OUT.partial/: run the same command again to resume a stopped run. "
                    "Use the tower with python -m embeddings.build --model OUT.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="the downloader's manifest.jsonl: a product is a class")
    source.add_argument("--images", type=Path, help="a folder with one sub-folder of images per class")
    source.add_argument("--fashion-mnist", nargs="?", const=KERAS_DATASET, metavar="DIR",
                        help="Fashion-MNIST: DIR holds the four IDX files (train-images-idx3-ubyte.gz, ...); "
                             "without DIR, keras.datasets downloads them (needs the internet)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the tower")
    parser.add_argument("--backbone", choices=TOWER_BACKBONES, default="vgg19",
                        help="pre-trained backbone, or small-cnn (4 convolutions, grayscale, from scratch)")
    parser.add_argument("--weights", default=None,
                        help="imagenet, none (seeded random) or PATH to Keras' weights file of the full model "
                             "(default: imagenet; none for small-cnn)")
    parser.add_argument("--trainable", type=float, default=None,
                        help="top share of the backbone's layers with weights that learn "
                             "(default 0.3; 1 for small-cnn)")
    parser.add_argument("--augment", action="store_true",
                        help="random resized crop, flip and colour jitter while training (seeded)")
    parser.add_argument("--dropout", type=float, default=0.2, help="dropout in the head (default: 0.2)")
    parser.add_argument("--hidden", type=parse_sizes, default=None,
                        help="head hidden layer sizes (default: 1024; 256 for small-cnn)")
    parser.add_argument("--dim", type=int, default=128, help="embedding size (default: 128)")
    parser.add_argument("--input-size", type=_size, default=None,
                        help="network input, e.g. 224 or 160x120 (default: 224; 28 for small-cnn)")
    parser.add_argument("--loss", choices=("triplet", "contrastive"), default="triplet")
    parser.add_argument("--mining", choices=MINING, default="semi-hard", help="triplet mining (default: semi-hard)")
    parser.add_argument("--margin", type=float, default=None,
                        help="loss margin on unit-length embeddings (default: 0.2 triplet, 1.0 contrastive)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adam learning rate (default: 1e-4 fine-tuning, 1e-3 from scratch)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: training images / batch size")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="products (or images per class) held out")
    parser.add_argument("--patience", type=int, default=5, help="epochs without a better val top-10 before stopping")
    parser.add_argument("--eval-limit", type=int, default=2000, help="at most this many validation/test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait", action="store_true",
                        help="wait for another run writing OUT to finish, instead of failing")
    parser.add_argument("--restart", action="store_true",
                        help="discard the checkpoint of an interrupted run in OUT.partial/ and start over")
    parser.add_argument("--quiet", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    small = args.backbone == "small-cnn"
    weights = args.weights or ("none" if small else "imagenet")
    head = HeadConfig(hidden=args.hidden or ((256,) if small else (1024,)), dim=args.dim, dropout=args.dropout,
                      seed=args.seed)
    tower = TowerConfig(backbone=args.backbone, weights=None if weights.lower() == "none" else weights,
                        trainable=args.trainable, augment=args.augment, head=head, input_size=args.input_size,
                        seed=args.seed)
    return FinetuneConfig(
        out=args.out, manifest=args.manifest, images=args.images, fashion_mnist=args.fashion_mnist, tower=tower,
        loss=args.loss, mining=args.mining, margin=args.margin, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, val_fraction=args.val_fraction, patience=args.patience,
        steps_per_epoch=args.steps_per_epoch, eval_limit=args.eval_limit, seed=args.seed, progress=not args.quiet,
        wait=args.wait, restart=args.restart)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result = finetune(config_from_args(args))
    except (OSError, ValueError, LockHeld, WeightsUnavailableError, DownloadError) as error:
        print(f"error: {error}", file=sys.stderr)  # OSError: FileNotFoundError; ValueError: IdxError, ManifestError
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished epochs are kept in {args.out}.partial/; run the same command to resume",
              file=sys.stderr)
        return 130
    print("                    top-1   top-10  pair accuracy")
    rows = [("validation, pixels", result.raw), ("validation, tower", result.val), ("test, tower", result.test)]
    for name, figures in rows:
        if figures is not None:
            print(f"{name:19s} {figures['top1']:6.3f}  {figures['top10']:6.3f}  {figures['pair_accuracy']:6.3f}")
    print(f"best epoch {result.best_epoch} of {result.epochs_run}; tower written to {result.out}")
    return 0


share_name_with(__name__, finetune)


if __name__ == "__main__":
    sys.exit(main())
