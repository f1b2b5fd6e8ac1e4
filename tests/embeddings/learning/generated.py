"""Generated training data for the tower tests: IDX files of textured classes and a tiny product manifest."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from embeddings.learning.fashion_mnist import FILES


def stripe_classes(per_class: int, classes: int = 6, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey images whose class is the orientation of their stripes, at a random period, phase, contrast and
    grey level, with noise: a texture that convolutions see and pixel-by-pixel comparison mostly does not."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class)
    images = np.empty((len(labels), size, size), np.float32)
    for i, label in enumerate(labels):
        angle = np.pi * label / classes + rng.normal(0, 0.05)
        phase = (x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / rng.uniform(3, 10) + rng.uniform(0, 2 * np.pi)
        images[i] = rng.uniform(50, 200) + 40 * rng.uniform(0.7, 1.3) * np.sin(phase) + rng.normal(0, 30, (size, size))
    order = rng.permutation(len(labels))
    return np.clip(images[order], 0, 255).astype(np.uint8), labels[order].astype(np.uint8)


def write_idx_set(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """The four Fashion-MNIST files, written byte by byte (IDX: 0, 0, type 0x08, rank, big-endian sizes, data)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": train[0], "train_labels": train[1], "test_images": test[0], "test_labels": test[1]}
    for key, array in arrays.items():
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
        (folder / f"{FILES[key]}.gz").write_bytes(gzip.compress(payload))
    return folder


def product_manifest(root: Path, products: int = 8, test_products: int = 2, size: int = 32, seed: int = 0) -> Path:
    """Street crops and shop photos of coloured products (two categories); the last ``test_products`` have
    test street crops. Returns the manifest's path."""
    rng = np.random.default_rng(seed)
    lines = []
    for product in range(products):
        colour = rng.integers(0, 256, 3)
        split = "test" if product >= products - test_products else "train"
        for kind, count in (("street", 2), ("shop", 2)):
            for index in range(count):
                photo = product * 10 + index + (5 if kind == "shop" else 0)
                path = f"{kind}/{photo}.png"
                pixels = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                (root / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / path)
                record = {"path": path, "kind": kind, "photo": photo, "product": product,
                          "category": "tops" if product % 2 else "skirts"}
                if kind == "street":
                    record["split"] = split
                lines.append(json.dumps(record))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
