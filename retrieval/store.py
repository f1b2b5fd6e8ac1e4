"""The index file: shop embeddings with their photo, product, category and image path, in one HDF5 file.

Rows are sorted by category, so that a category is a contiguous slice that ranks without copying.
Ids (the manifest's image paths) and categories are kept as fixed-width UTF-8 bytes, and an image's
file is its root (one of a few, in the attributes) joined with its id: 400,000 rows of metadata then
take a few MB instead of the hundreds that Python strings would.
The attributes record the backbone, weights and head that made the embeddings, so that a query is
embedded the same way; a mismatch is an error that says expected and actual.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from downloader.records import read_jsonl
from embeddings.extraction.cache import check_identity, read_vectors, versions

logger = logging.getLogger(__name__)

FORMAT = "street2shop-index/1"


class IndexFileError(ValueError):
    """A missing, corrupt, empty or mismatched index; the message names the file and the problem."""


@dataclass
class IndexData:
    """An index in memory. ``ids`` and ``categories`` are bytes arrays; ``roots[i]`` picks the folder in
    ``attrs["roots"]`` that ``ids[i]`` is relative to. ``attrs`` holds ``backbone`` (the vector cache's
    identity), ``head`` (None for raw vectors) and ``metric``."""

    embeddings: np.ndarray
    ids: np.ndarray
    photos: np.ndarray
    products: np.ndarray
    categories: np.ndarray
    roots: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def id(self, row: int) -> str:
        return self.ids[row].decode()

    def category(self, row: int) -> str:
        return self.categories[row].decode()

    def path(self, row: int) -> str:
        return str(Path(self.attrs["roots"][int(self.roots[row])]) / self.id(row))

    def id_list(self) -> list[str]:
        return [key.decode() for key in self.ids]

    def sorted(self) -> "IndexData":
        order = np.lexsort((self.photos, self.products, self.categories))
        return IndexData(self.embeddings[order], self.ids[order], self.photos[order], self.products[order],
                         self.categories[order], self.roots[order], self.attrs)

    def category_slices(self) -> dict[str, tuple[int, int]]:
        names, starts, counts = np.unique(self.categories, return_index=True, return_counts=True)
        return {name.decode(): (int(start), int(start + count)) for name, start, count in zip(names, starts, counts)}


def as_bytes(values: list[str]) -> np.ndarray:
    """Fixed-width UTF-8 bytes (at least one byte wide, so that an empty list still has a dtype)."""
    return np.array([v.encode() for v in values], dtype="S") if values else np.zeros(0, dtype="S1")


def save_index(path: str | Path, index: IndexData) -> None:
    """Write atomically (temporary file, then rename): a failed write never harms an existing index."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.part")
    try:
        with h5py.File(temp, "w") as handle:
            handle.attrs["format"] = FORMAT
            handle.attrs["meta"] = json.dumps(index.attrs, sort_keys=True)
            handle.create_dataset("embeddings", data=index.embeddings.astype(np.float32),
                                  chunks=(max(1, min(len(index), 4096)), index.embeddings.shape[1]) if len(index) else None)
            handle["ids"] = index.ids
            handle["photos"] = index.photos.astype(np.int64)
            handle["products"] = index.products.astype(np.int64)
            handle["categories"] = index.categories
            handle["roots"] = index.roots.astype(np.int16)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def load_index(path: str | Path) -> IndexData:
    """Read an index into memory.

    Raises:
        FileNotFoundError: no such file.
        IndexFileError: not an index of this project, or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index does not exist (build one with python -m retrieval.index)")
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != FORMAT:
                raise IndexFileError(f"{path}: not an index of this project (no '{FORMAT}' format attribute)")
            return IndexData(
                embeddings=handle["embeddings"][:].astype(np.float32, copy=False),
                ids=handle["ids"][:], photos=handle["photos"][:], products=handle["products"][:],
                categories=handle["categories"][:], roots=handle["roots"][:],
                attrs=json.loads(handle.attrs["meta"]),
            )
    except (OSError, KeyError) as error:
        raise IndexFileError(f"{path}: corrupt or unreadable index ({str(error).splitlines()[0][:160]})") from None


def shop_records(manifest: str | Path, categories: list[str] | None = None) -> list[dict[str, Any]]:
    """The manifest's shop photos (of ``categories`` if given), one per image path."""
    seen: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(manifest):
        if record["kind"] == "shop" and (not categories or record["category"] in categories):
            seen.setdefault(record["path"], record)
    return list(seen.values())


def embed_shop(vectors_path: str | Path, manifest: str | Path, head: Any | None,
               categories: list[str] | None = None, skip: set[str] | None = None) -> IndexData:
    """Index rows for the manifest's shop photos that have a cached vector (minus ``skip`` ids)."""
    vectors = read_vectors(vectors_path)
    rows = vectors.positions()
    listed = shop_records(manifest, categories)
    records = [r for r in listed if r["path"] in rows and r["path"] not in (skip or ())]
    missing = sum(1 for r in listed if r["path"] not in rows)
    if missing:
        logger.warning("%d shop photos of the manifest have no cached vector and are left out", missing)
    raw = vectors.vectors[[rows[r["path"]] for r in records]] if records else np.zeros((0, vectors.vectors.shape[1]),
                                                                                       np.float32)
    if head is not None:
        check_identity(vectors_path, vectors.attrs, {k: v for k, v in head.backbone.items() if k != "file"})
    embeddings = head.embed(raw) if head is not None else raw
    root = Path(manifest).resolve().parent
    attrs = {
        "backbone": {key: vectors.attrs.get(key) for key in ("backbone", "layer", "weights", "input_size", "dim")
                     } | ({"weights_file": vectors.attrs["weights_file"]} if "weights_file" in vectors.attrs else {}),
        "head": None if head is None else {"identity": head.identity, "path": str(Path(head.path).resolve()),
                                           "dim": head.dim},
        "metric": "euclidean" if head is not None else "cosine",
        "roots": [str(root)],
        "versions": versions(),
    }
    return IndexData(
        embeddings=np.asarray(embeddings, np.float32),
        ids=as_bytes([r["path"] for r in records]),
        photos=np.array([r["photo"] for r in records], dtype=np.int64),
        products=np.array([r["product"] for r in records], dtype=np.int64),
        categories=as_bytes([r["category"] for r in records]),
        roots=np.zeros(len(records), dtype=np.int16),
        attrs=attrs,
    )


def same_maker(path: str | Path, index: IndexData, new: IndexData) -> None:
    """Raise ``IndexFileError`` unless ``new`` rows were made by the same backbone, weights and head as ``index``."""
    found, wanted = index.attrs, new.attrs
    check_identity(path, found["backbone"], wanted["backbone"])
    old_head = (found.get("head") or {}).get("identity")
    new_head = (wanted.get("head") or {}).get("identity")
    if old_head != new_head:
        raise IndexFileError(f"{path}: built with head {old_head or 'none (raw vectors)'}, "
                          f"not {new_head or 'none (raw vectors)'}")


def concatenate(index: IndexData, new: IndexData) -> IndexData:
    """Rows of both, sorted by category; ``new``'s image root joins the index's roots."""
    roots = list(index.attrs["roots"])
    if new.attrs["roots"][0] not in roots:
        roots.append(new.attrs["roots"][0])
    new_roots = np.full(len(new), roots.index(new.attrs["roots"][0]), dtype=np.int16)
    merged = IndexData(  # concatenating bytes arrays widens to the longer of the two: nothing is cut
        np.concatenate([index.embeddings, new.embeddings]),
        np.concatenate([index.ids, new.ids]),
        np.concatenate([index.photos, new.photos]), np.concatenate([index.products, new.products]),
        np.concatenate([index.categories, new.categories]),
        np.concatenate([index.roots, new_roots]), dict(index.attrs, roots=roots))
    return merged.sorted()


def build_index(vectors: str | Path, manifest: str | Path, out: str | Path, head: str | Path | None = None,
                categories: list[str] | None = None, add: bool = False) -> tuple[IndexData, int]:
    """Embed the shop vectors with ``head`` (raw vectors if None) and write ``out``; with ``add``, append the
    photos not yet in the existing ``out`` (same backbone, weights and head required), without re-embedding
    the others. Returns the index and the number of rows added.

    Raises:
        FileNotFoundError, IndexFileError, CacheError, ValueError: named inputs.
    """
    from embeddings.learning.head import load_head

    for path, what in ((vectors, "vector cache"), (manifest, "manifest")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: {what} does not exist")
    loaded_head = load_head(head) if head is not None else None
    existing = load_index(out) if add and Path(out).exists() else None
    new = embed_shop(vectors, manifest, loaded_head, categories, skip=set(existing.id_list()) if existing else None)
    if existing is not None:
        same_maker(out, existing, new)
        index = concatenate(existing, new)
    else:
        index = new.sorted()
    if not len(index):
        raise IndexFileError(f"{manifest}: no shop photo with a cached vector"
                             + (f" in categories {categories}" if categories else "") + ": the index would be empty")
    save_index(out, index)
    return index, len(new)
