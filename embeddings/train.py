"""``python -m embeddings.train``: learn a Siamese head over cached backbone vectors."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common import LockHeld
from common.commands import share_name_with

from .learning.head import HeadConfig
from .learning.losses import MINING
from .learning.fit import TrainConfig, train


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes such as 1024,512, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embeddings.train",
        description="Train a Siamese head that maps backbone vectors to a compact embedding where a street crop "
                    "lands near the shop photos of its product. Writes OUT/model.keras, config.json, "
                    "history.json and training.png, as one folder at the end. After every epoch a checkpoint is kept in "
                    "OUT.partial/: run the same command again to resume a stopped run from its last finished epoch. "
                    "Without --manifest, the cache's labels (a folder with one sub-folder per class) are used instead.")
    parser.add_argument("--vectors", type=Path, required=True, help="the vector cache (python -m embeddings.build)")
    parser.add_argument("--manifest", type=Path, help="the downloader's manifest.jsonl: street/shop pairs by product")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the head")
    parser.add_argument("--loss", choices=("triplet", "contrastive"), default="triplet")
    parser.add_argument("--mining", choices=MINING, default="semi-hard", help="triplet mining (default: semi-hard)")
    parser.add_argument("--margin", type=float, default=None,
                        help="loss margin on unit-length embeddings (default: 0.2 triplet, 1.0 contrastive)")
    parser.add_argument("--dim", type=int, default=128, help="embedding size (default: 128)")
    parser.add_argument("--hidden", type=parse_sizes, default=(1024,), help="hidden layer sizes (default: 1024)")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--no-batch-norm", action="store_true")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--negatives", type=float, default=1.0,
                        help="contrastive: non-matching pairs per matching pair (default: 1)")
    parser.add_argument("--in-class", type=float, default=0.5,
                        help="share of negatives drawn from the same category (default: 0.5)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="products held out for validation")
    parser.add_argument("--patience", type=int, default=5, help="epochs without a better val top-10 before stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="a bad manifest line is an error (default: skipped, reported)")
    parser.add_argument("--wait", action="store_true", help="wait for another run writing OUT to finish, instead of failing")
    parser.add_argument("--restart", action="store_true",
                        help="discard the checkpoint of an interrupted run in OUT.partial/ and start over")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = TrainConfig(
        vectors=args.vectors, out=args.out, manifest=args.manifest, loss=args.loss, mining=args.mining,
        margin=args.margin, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        negatives_per_positive=args.negatives, in_class=args.in_class, val_fraction=args.val_fraction,
        patience=args.patience, seed=args.seed, progress=not args.quiet, strict_manifest=args.strict,
        wait=args.wait, restart=args.restart,
        head=HeadConfig(hidden=args.hidden, dim=args.dim, dropout=args.dropout, batch_norm=not args.no_batch_norm,
                        seed=args.seed))
    try:
        result = train(config)
    except (OSError, ValueError, LockHeld) as error:  # FileNotFoundError, CacheError, ManifestError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished epochs are kept in {args.out}.partial/; run the same command to resume",
              file=sys.stderr)
        return 130
    print("validation          top-1   top-10  pair accuracy")
    for name, figures in (("raw vectors", result.raw), ("trained head", result.head)):
        print(f"{name:18s} {figures['top1']:6.3f}  {figures['top10']:6.3f}  {figures['pair_accuracy']:6.3f}")
    print(f"best epoch {result.best_epoch} of {result.epochs_run}; head written to {result.out}")
    return 0


share_name_with(__name__, train)


if __name__ == "__main__":
    sys.exit(main())
