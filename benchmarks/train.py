"""Siamese head: validation accuracy of raw vectors vs the head for each loss, and training time at scale.

    python benchmarks/train.py [--products 400] [--dim 512] [--epochs 20] [--scale-items 30000]

Part 1 trains every loss on the same synthetic product data in the downloader's manifest format:
each product has shop photos and street crops whose vectors share a signal in a few dimensions,
while street crops carry a shared "street" shift and all vectors carry large noise elsewhere, so raw
ranking is weak and a learned projection is needed. Part 2 times training epochs on
``--scale-items`` vectors of 4096 dimensions, as VGG19 fc2 gives, to show minutes rather than hours.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embeddings import HeadConfig, TrainConfig, Vectors, train, write_vectors  # noqa: E402

CATEGORIES = ("bags", "dresses", "footwear", "skirts")


def product_data(folder: Path, products: int, dim: int, seed: int = 0, signal: int = 8,
                 shop_per_product: int = 2, street_per_product: int = 2) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(products, signal))
    category_shift = rng.normal(size=(len(CATEGORIES), signal)) * 0.5
    street_shift = rng.normal(size=dim) * 1.5
    ids, vectors, records = [], [], []
    for product in range(products):
        category = CATEGORIES[product % len(CATEGORIES)]
        base = centres[product] + category_shift[product % len(CATEGORIES)]
        for kind, count in (("shop", shop_per_product), ("street", street_per_product)):
            for number in range(count):
                vector = rng.normal(scale=2.0, size=dim)
                vector[:signal] = base + rng.normal(scale=0.25 if kind == "shop" else 0.45, size=signal)
                if kind == "street":
                    vector += street_shift
                path = f"{kind}/{product}_{number}.jpg"
                ids.append(path)
                vectors.append(vector)
                records.append({"path": path, "kind": kind, "photo": len(records), "product": product,
                                "category": category, "split": "train", "bbox": None})
    cache = folder / "vectors.h5"
    write_vectors(cache, Vectors(np.array(ids, dtype=object), np.array(vectors, dtype=np.float32),
                                 {"backbone": "synthetic", "layer": "-", "weights": "-", "input_size": [0, 0],
                                  "dim": dim}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return cache, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=400)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--scale-items", type=int, default=30000, help="vectors for the timing part (0: skip)")
    parser.add_argument("--scale-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    runs = [("triplet", "semi-hard"), ("triplet", "batch-hard"), ("triplet", "batch-all"), ("contrastive", "-")]
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        cache, manifest = product_data(root, args.products, args.dim)
        print(f"{args.products} products in {len(CATEGORIES)} categories, 2 shop photos and 2 street crops each, "
              f"{args.dim}-d vectors; validation: 15% of the products")
        print(f"{'loss':<26}{'top-1':>8}{'top-10':>8}{'pair acc':>10}{'s/epoch':>9}")
        raw_printed = False
        for loss, mining in runs:
            result = train(TrainConfig(vectors=cache, manifest=manifest, out=root / f"head-{loss}-{mining}",
                                       loss=loss, mining=mining if mining != "-" else "semi-hard",
                                       epochs=args.epochs, patience=args.epochs, batch_size=256,
                                       head=HeadConfig(hidden=(512,), dim=64)))
            seconds = float(np.mean(json.loads((result.out / "history.json").read_text())["seconds"]))
            if not raw_printed:
                raw = result.raw
                print(f"{'raw vectors':<26}{raw['top1']:>8.3f}{raw['top10']:>8.3f}{raw['pair_accuracy']:>10.3f}")
                raw_printed = True
            name = f"{loss} {mining}" if mining != "-" else loss
            head = result.head
            print(f"{'head: ' + name:<26}{head['top1']:>8.3f}{head['top10']:>8.3f}{head['pair_accuracy']:>10.3f}"
                  f"{seconds:>9.1f}", flush=True)
        if args.scale_items:
            products = args.scale_items // 4
            (root / "scale").mkdir()
            cache, manifest = product_data(root / "scale", products, 4096, signal=32)
            start = time.perf_counter()
            result = train(TrainConfig(vectors=cache, manifest=manifest, out=root / "head-scale",
                                       epochs=args.scale_epochs, patience=args.scale_epochs, batch_size=256))
            elapsed = time.perf_counter() - start
            epoch = float(np.mean(json.loads((result.out / "history.json").read_text())["seconds"]))
            print(f"\nscale: {products * 4} vectors of 4096-d ({products} products), default head (1024 -> 128), "
                  f"triplet semi-hard, batch 256: {epoch:.1f} s per training epoch; whole run of "
                  f"{result.epochs_run} epochs {elapsed:.0f} s (loading, baselines, validation and outputs included); "
                  f"30 epochs: about {(elapsed + 28 * epoch) / 60:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
