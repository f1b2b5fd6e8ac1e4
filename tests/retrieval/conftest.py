"""A small synthetic dataset on disk: a vector cache, a manifest and shop images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embeddings import Vectors, write_vectors
from tests.conftest import make_image

ATTRS = {"backbone": "vgg19", "layer": "fc2", "weights": "random:0", "input_size": [224, 224], "dim": 4}


def write_dataset(root: Path, shop: dict[str, tuple[int, str, list[float]]],
                  street: dict[str, tuple[int, str, str, list[float]]]) -> tuple[Path, Path]:
    """``shop``: path -> (product, category, vector); ``street``: path -> (product, category, split, vector)."""
    root.mkdir(parents=True, exist_ok=True)
    records, ids, vectors = [], [], []
    for number, (path, (product, category, vector)) in enumerate(shop.items()):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        make_image(24, 24, seed=number).save(root / path)
        records.append({"path": path, "kind": "shop", "photo": 1000 + number, "product": product,
                        "category": category, "split": "test", "bbox": None})
        ids.append(path)
        vectors.append(vector)
    for number, (path, (product, category, split, vector)) in enumerate(street.items()):
        records.append({"path": path, "kind": "street", "photo": number, "product": product, "category": category,
                        "split": split, "bbox": {"left": 0, "top": 0, "width": 5, "height": 5}})
        ids.append(path)
        vectors.append(vector)
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    cache = root / "vectors.h5"
    write_vectors(cache, Vectors(np.array(ids, dtype=object), np.array(vectors, dtype=np.float32),
                                 dict(ATTRS, dim=len(vectors[0]))))
    return cache, manifest


SHOP = {
    "shop/a1.jpg": (1, "bags", [1, 0, 0, 0]),
    "shop/a2.jpg": (1, "bags", [0.9, 0.1, 0, 0]),
    "shop/b1.jpg": (2, "bags", [0, 1, 0, 0]),
    "shop/c1.jpg": (3, "dresses", [0, 0, 1, 0]),
    "shop/d1.jpg": (4, "dresses", [0, 0, 0.7, 0.7]),
    "shop/e1.jpg": (5, "dresses", [0, 0, 0, 1]),
}
STREET = {
    # bags: nearest a1/a2 (product 1) -> rank 1; then b1
    "street/s1.jpg": (1, "bags", "test", [0.8, 0.2, 0.05, 0]),
    # bags: product 2 is second behind product 1's photos -> first hit at rank 3
    "street/s2.jpg": (2, "bags", "test", [1, 0.3, 0, 0]),
    # dresses: nearest d1 (product 4) but labelled 5 -> e1 at rank 2 by cosine
    "street/s3.jpg": (5, "dresses", "test", [0, 0, 0.6, 0.8]),
    "street/t1.jpg": (1, "bags", "train", [1, 0, 0, 0]),
}


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "data", SHOP, STREET)
