"""What a tower learns from, as the head's ``ItemSet``s whose ``vectors`` are RGB images (N x H x W x 3, uint8):

- a manifest: a product's street crops (queries) and shop photos (gallery) are one class, grouped by
  category; validation holds out whole products; the test split is the manifest's ``test`` street crops;
- a folder: a sub-folder is a class; validation and test hold out images of every class;
- Fashion-MNIST: a label is a class; validation holds out images of every class; the test set is ``t10k``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import read_manifest

from ..extraction.cache import Vectors
from .fashion_mnist import load_fashion_mnist
from .pixels import ImageFiles, ResizedImages
from .samplers import ItemSet, from_labels, from_manifest, split_validation

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class PixelSplits:
    """Training, validation and (where the source has one) test items, and where they came from."""

    train: ItemSet
    val: ItemSet
    test: ItemSet | None
    source: dict[str, Any]


def manifest_splits(manifest: str | Path, size: tuple[int, int], val_fraction: float,
                    seed: int) -> PixelSplits:
    """Street crops of the ``train`` split with their products' shop photos; ``test`` street crops for the test."""
    checked = read_manifest(manifest)
    for problem in checked.problems:
        logger.warning("%s", problem)
    paths = list(dict.fromkeys(entry.path for entry in checked.entries))
    by_path = {entry.path: checked.file(entry) for entry in checked.entries}
    files = [by_path[path] for path in paths]
    images = Vectors(np.array(paths, dtype=object), ImageFiles(files, size), {})
    train, val = split_validation(from_manifest(images, manifest, "train"), val_fraction, seed)
    try:
        test = from_manifest(images, manifest, "test")
    except ValueError:
        test = None
    return PixelSplits(train, val, test, {"mode": "products", "manifest": str(manifest)})


def folder_splits(folder: str | Path, size: tuple[int, int], val_fraction: float,
                  seed: int, test_fraction: float = 0.15) -> PixelSplits:
    """Every image under a sub-folder of ``folder``, labelled by that sub-folder."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and len(p.relative_to(root).parts) > 1)
    if not files:
        raise ValueError(f"{root}: no images in sub-folders (one sub-folder per class is expected)")
    ids = np.array([p.relative_to(root).as_posix() for p in files], dtype=object)
    labels = np.array([p.relative_to(root).parts[0] for p in files], dtype=object)
    items = from_labels(Vectors(ids, ImageFiles(files, size), {}, labels))
    rest, test = split_validation(items, test_fraction, seed + 1)
    train, val = split_validation(rest, val_fraction, seed)
    return PixelSplits(train, val, test, {"mode": "labels", "images": str(root)})


def _labelled(images: np.ndarray, labels: np.ndarray, prefix: str, size: tuple[int, int]) -> ItemSet:
    """Grey images as RGB (a grey tower's luma gives the grey back), resized when read if the tower takes
    another size than theirs."""
    everything = np.ones(len(labels), dtype=bool)
    if tuple(size) == images.shape[1:3]:
        pixels: Any = np.repeat(images[..., None], 3, axis=-1)
    else:
        pixels = ResizedImages(images, size)
    return ItemSet(pixels, labels.astype(np.int64),
                   np.full(len(labels), "", dtype=object), everything, everything.copy(),
                   np.array([f"{prefix}/{i}" for i in range(len(labels))], dtype=object))


def fashion_mnist_splits(folder: str | Path | None, size: tuple[int, int], val_fraction: float,
                         seed: int) -> PixelSplits:
    """Fashion-MNIST's training set (validation held out of it) and its ``t10k`` test set, at ``size``."""
    data = load_fashion_mnist(folder)
    train, val = split_validation(_labelled(data.train_images, data.train_labels, "train", size), val_fraction, seed)
    return PixelSplits(train, val, _labelled(data.test_images, data.test_labels, "t10k", size),
                       {"mode": "labels", "fashion_mnist": str(folder) if folder else "keras.datasets"})


def limit_items(items: ItemSet, limit: int, seed: int) -> ItemSet:
    """At most about ``limit`` items for evaluation (a retrieval matrix is items squared): a seeded sample of
    items (labelled sets) or of whole products (so that every query keeps its shop photos)."""
    if len(items) <= limit:
        return items
    rng = np.random.default_rng(seed)
    if items.same_sides:
        keep = np.zeros(len(items), dtype=bool)
        keep[rng.choice(len(items), size=limit, replace=False)] = True
        return items.subset(keep)
    labels, counts = np.unique(items.labels, return_counts=True)
    order = rng.permutation(len(labels))
    chosen = labels[order][np.cumsum(counts[order]) <= limit]
    return items.subset(np.isin(items.labels, chosen if len(chosen) else labels[order][:1]))
