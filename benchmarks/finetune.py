"""End-to-end training: the head over frozen vectors against a fine-tuned tower, and a small CNN from scratch.

    python benchmarks/finetune.py [--products 160] [--backbone mobilenet_v2] [--weights none] [--input-size 96]
                                  [--epochs 6] [--trainable 0.3] [--fashion-train 6000] [--json results.json]

Part 1 draws products as images in the downloader's manifest format: each product is a coloured,
striped patch with a mark; its shop photos show it centred on white, its street crops show it smaller,
shifted, darker or brighter, on clutter, with noise. On the products held out for validation it
compares (a) the backbone's frozen vectors ranked raw, (b) the Siamese head trained over them
(``embeddings.train``), (c) the tower trained end to end (``embeddings.finetune``: the top ``--trainable``
share of the backbone's layers and the head), with and without augmentation; and the seconds per image
per training step of each. With ``--weights none`` the backbone is random: this measures the machinery
and its cost, not what fine-tuning ImageNet features gives. For that, pass ``--weights imagenet``
(downloads) or ``--weights PATH`` (Keras' weights file of the full model), on a GPU.

Part 2 trains ``small-cnn`` from scratch on generated Fashion-MNIST-like IDX files (ten classes of
grey 28 x 28 textures; the real Fashion-MNIST cannot be downloaded on a machine without internet:
pass ``--fashion-mnist DIR`` with its four files to use it instead).
"""

from __future__ import annotations

import argparse
import gzip
import os
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from embeddings import HeadConfig, TrainConfig, Vectors, train, write_vectors  # noqa: E402
from embeddings.extraction.preprocess import load_pixels  # noqa: E402
from embeddings.learning.fashion_mnist import FILES  # noqa: E402
from embeddings.learning.finetuning import FinetuneConfig, finetune  # noqa: E402
from embeddings.learning.tower import SCALING, TowerConfig, pretrained_trunk  # noqa: E402

CATEGORIES = ("bags", "dresses", "footwear", "skirts")


def product_look(rng: np.random.Generator, category: int, size: int = 64) -> np.ndarray:
    """One product: a patch whose colour range is its category's, with stripes and a mark of its own."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    hue = np.clip(np.array([60, 60, 60]) + 150 * np.eye(3)[category % 3] + rng.uniform(-50, 50, 3), 0, 255)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
    stripes = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    patch = hue * (0.55 + 0.45 * stripes[..., None])
    top, left, side = *rng.integers(8, size - 24, 2), int(rng.integers(10, 18))
    patch[top:top + side, left:left + side] = rng.uniform(0, 255, 3)
    return patch


def shop_photo(look: np.ndarray, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    canvas = np.full((size, size, 3), 245.0)
    start = (size - look.shape[0]) // 2
    canvas[start:start + look.shape[0], start:start + look.shape[1]] = look
    return canvas + rng.normal(0, 3, canvas.shape)


def street_crop(look: np.ndarray, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    canvas = rng.uniform(40, 200, 3) + rng.normal(0, 30, (size, size, 3))  # clutter
    side = int(look.shape[0] * rng.uniform(0.7, 1.2))
    resized = np.asarray(Image.fromarray(look.astype(np.uint8)).resize((side, side)), np.float32)
    top, left = rng.integers(0, size - side + 1, 2)
    canvas[top:top + side, left:left + side] = resized * rng.uniform(0.6, 1.3)
    return canvas + rng.normal(0, 12, canvas.shape)


def product_images(folder: Path, products: int, seed: int = 0) -> Path:
    """Shop photos and street crops of ``products`` products (2 of each), the last 15% in the test split."""
    rng = np.random.default_rng(seed)
    lines = []
    for product in range(products):
        category = product % len(CATEGORIES)
        look = product_look(rng, category)
        split = "test" if product >= int(products * 0.85) else "train"
        for kind, draw in (("shop", shop_photo), ("street", street_crop)):
            for number in range(2):
                path = f"{kind}/{product}_{number}.png"
                (folder / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(draw(look, rng), 0, 255).astype(np.uint8)).save(folder / path)
                record = {"path": path, "kind": kind, "photo": len(lines), "product": product,
                          "category": CATEGORIES[category]}
                lines.append(json.dumps(dict(record, split=split) if kind == "street" else record))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def frozen_vectors(manifest: Path, backbone: str, weights: str | None, size: tuple[int, int]) -> tuple[Path, float]:
    """The backbone's vectors of every image (what ``embeddings.build`` caches), and seconds per image."""
    import keras

    from embeddings.learning.layers import PixelScaling

    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    pixels = np.stack([load_pixels(manifest.parent / r["path"], size) for r in records]).astype(np.float32)
    inputs = keras.Input((*size, 3))
    network = keras.Model(inputs, pretrained_trunk(backbone, weights, size)(PixelScaling(SCALING[backbone])(inputs)))
    start = time.perf_counter()
    vectors = network.predict(pixels, batch_size=32, verbose=0)
    seconds = (time.perf_counter() - start) / len(pixels)
    cache = manifest.parent / "vectors.h5"
    write_vectors(cache, Vectors(np.array([r["path"] for r in records], dtype=object), vectors.astype(np.float32),
                                 {"backbone": backbone, "layer": "pooled", "weights": str(weights),
                                  "input_size": list(size), "dim": int(vectors.shape[1])}))
    return cache, seconds


def per_image_step(folder: Path) -> float:
    """Mean seconds per training image of the epochs after the first (which compiles), from a run folder."""
    history = json.loads((folder / "history.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    seconds = history["seconds"][1:] or history["seconds"]
    images = config.get("data", {}).get("images_per_epoch") or config["data"]["train_items"]
    return float(np.mean(seconds)) / images


def write_fashion_like(folder: Path, train: int, test: int, seed: int = 0) -> Path:
    """Ten classes of grey 28 x 28 textures (stripe orientation and period) in the four IDX files."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        angles = np.pi * (labels % 5) / 5 + rng.normal(0, 0.08, count)
        periods = np.where(labels < 5, 4.0, 9.0) * rng.uniform(0.85, 1.15, count)
        phase = ((x[None] * np.cos(angles)[:, None, None] + y[None] * np.sin(angles)[:, None, None])
                 * 2 * np.pi / periods[:, None, None] + rng.uniform(0, 2 * np.pi, (count, 1, 1)))
        images = rng.uniform(50, 200, (count, 1, 1)) + 30 * np.sin(phase) + rng.normal(0, 40, (count, 28, 28))
        images = np.clip(images, 0, 255).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    assert all((folder / f"{name}.gz").is_file() for name in FILES.values())
    return folder


def figures(result: dict[str, float]) -> str:
    return f"{result['top1']:.3f} / {result['top10']:.3f} / {result['pair_accuracy']:.3f}"


def products_part(args: argparse.Namespace, root: Path) -> dict[str, object]:
    manifest = product_images(root / "products", args.products)
    size = (args.input_size, args.input_size)
    weights = None if args.weights == "none" else args.weights
    cache, extract_seconds = frozen_vectors(manifest, args.backbone, weights, size)
    start = time.perf_counter()
    head = train(TrainConfig(vectors=cache, manifest=manifest, out=root / "head", epochs=30, batch_size=64,
                             val_fraction=0.2, patience=8, head=HeadConfig(hidden=(256,), dim=64, dropout=0.1)))
    head_seconds = time.perf_counter() - start
    results = {"raw frozen vectors": head.raw, "head over frozen vectors": head.head}
    timing = {"head over frozen vectors": per_image_step(root / "head")}  # per cached vector: no network
    for name, augment in (("fine-tuned tower", False), ("fine-tuned tower, --augment", True)):
        out = root / name.replace(" ", "_").replace(",", "").replace("-", "")
        tower = TowerConfig(args.backbone, weights=weights, trainable=args.trainable, augment=augment, input_size=size,
                            head=HeadConfig(hidden=(256,), dim=64, dropout=0.1))
        run = finetune(FinetuneConfig(out=out, manifest=manifest, tower=tower, epochs=args.epochs, batch_size=32,
                                      val_fraction=0.2, patience=args.epochs, learning_rate=args.learning_rate))
        results[name] = run.val
        timing[name] = per_image_step(out)
    return {"results": results, "seconds_per_image_step": timing, "extract_seconds_per_image": extract_seconds,
            "head_training_seconds": head_seconds}


def fashion_part(args: argparse.Namespace, root: Path) -> dict[str, object]:
    folder = Path(args.fashion_mnist) if args.fashion_mnist else write_fashion_like(
        root / "idx", args.fashion_train, args.fashion_train // 6)
    start = time.perf_counter()
    run = finetune(FinetuneConfig(out=root / "small_cnn", fashion_mnist=folder, epochs=args.fashion_epochs,
                                  batch_size=64, eval_limit=1500,
                                  tower=TowerConfig("small-cnn", weights=None, head=HeadConfig(hidden=(256,)))))
    return {"raw": run.raw, "val": run.val, "test": run.test, "epochs": run.epochs_run,
            "seconds": time.perf_counter() - start, "seconds_per_image_step": per_image_step(root / "small_cnn")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=160)
    parser.add_argument("--backbone", default="mobilenet_v2", choices=("mobilenet_v2", "resnet50", "vgg16", "vgg19"))
    parser.add_argument("--weights", default="none", help="none (random: the machinery), imagenet, or PATH")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each fine-tuning run")
    parser.add_argument("--trainable", type=float, default=0.3, help="top share of the backbone's layers that learn")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--fashion-train", type=int, default=6000, help="generated Fashion-MNIST-like images")
    parser.add_argument("--fashion-epochs", type=int, default=3)
    parser.add_argument("--fashion-mnist", default=None, help="a folder with the real four IDX files instead")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        products = products_part(args, Path(temp))
        fashion = fashion_part(args, Path(temp))
    print(f"Part 1: {args.products} generated products, {args.backbone} ({args.weights} weights) at "
          f"{args.input_size}x{args.input_size}, tower trainable {args.trainable}, {args.epochs} epochs; "
          f"validation products, top-1 / top-10 / pair accuracy")
    for name, result in products["results"].items():
        step = products["seconds_per_image_step"].get(name)
        print(f"  {name:30s} {figures(result)}" + (f"   {step * 1000:.2f} ms per image per step" if step else ""))
    print(f"  (the head's step time is per cached vector; extracting the frozen vectors took "
          f"{products['extract_seconds_per_image'] * 1000:.1f} ms per image, once; head training "
          f"{products['head_training_seconds']:.0f} s in all)")
    print(f"Part 2: small-cnn from scratch on generated Fashion-MNIST-like IDX files, {fashion['epochs']} epochs, "
          f"{fashion['seconds']:.0f} s, {fashion['seconds_per_image_step'] * 1000:.2f} ms per image per step")
    for name in ("raw", "val", "test"):
        label = {"raw": "validation, raw pixels", "val": "validation, tower", "test": "test (t10k), tower"}[name]
        print(f"  {label:30s} {figures(fashion[name])}")
    print(f"wall time {time.perf_counter() - wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"products": products, "fashion": fashion, "args": vars(args)}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
