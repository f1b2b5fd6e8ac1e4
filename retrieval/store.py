"""The index file: shop embeddings with their photo, product, category and image path, in one HDF5 file.

Rows are sorted by category, so that a category is a contiguous slice that ranks without copying.
Ids (the manifest's image paths) and categories are kept as fixed-width UTF-8 bytes, and an image's
file is its root (one of a few, in the attributes) joined with its id: 400,000 rows of metadata then
take a few MB instead of the hundreds that Python strings would.
The attributes record the backbone, weights and head that made the embeddings, so that a query is
embedded the same way; a mismatch is an error that says expected and actual.

An approximate index also holds, per category, a FAISS index serialised as a ``uint8`` dataset
(``ann/<n>``), the FAISS id of each row (``ann_ids``) and the FAISS ids of removed rows
(``ann_removed/<n>``); ``attrs["ann"]`` records the choice, its parameters, measured recall and query time.
Files of format 1 (before approximate search) load as exact indexes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "street2shop-index/2"
READABLE = ("street2shop-index/1", FORMAT)


class IndexFileError(ValueError):
    """A missing, corrupt, empty or mismatched index; the message names the file and the problem."""


@dataclass(frozen=True)
class StoredBlob:
    """A serialised FAISS index left in its index file, read a chunk at a time when it is opened. It keeps the
    file it was found in open, so that an index replaced on disk since (a rename) is never read by mistake."""

    file: h5py.File
    name: str

    @property
    def dataset(self) -> h5py.Dataset:
        return self.file[self.name]

    @property
    def nbytes(self) -> int:
        return int(self.dataset.shape[0])


@dataclass
class AnnPart:
    """One category's FAISS index, serialised (``blob``: bytes, or where they lie in an index file), the FAISS
    ids removed since, and how it was made."""

    blob: np.ndarray | StoredBlob
    removed: np.ndarray
    info: dict[str, Any]


@dataclass
class IndexData:
    """An index in memory. ``ids`` and ``categories`` are bytes arrays; ``roots[i]`` picks the folder in
    ``attrs["roots"]`` that ``ids[i]`` is relative to. ``attrs`` holds ``backbone`` (the vector cache's
    identity), ``head`` (None for raw vectors) and ``metric``. ``embeddings`` may be memory-mapped.
    ``ann`` (category -> AnnPart) and ``ann_ids`` (a FAISS id per row) are set for approximate indexes."""

    embeddings: np.ndarray
    ids: np.ndarray
    photos: np.ndarray
    products: np.ndarray
    categories: np.ndarray
    roots: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    ann: dict[str, AnnPart] = field(default_factory=dict)
    ann_ids: np.ndarray | None = None

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

    @property
    def approximate(self) -> bool:
        return bool(self.ann)

    def sorted(self) -> "IndexData":
        order = np.lexsort((self.photos, self.products, self.categories))
        return self.take(order)

    def take(self, rows: np.ndarray) -> "IndexData":
        """These rows (in this order), with the same attributes and FAISS parts."""
        return IndexData(self.embeddings[rows], self.ids[rows], self.photos[rows], self.products[rows],
                         self.categories[rows], self.roots[rows], self.attrs, self.ann,
                         None if self.ann_ids is None else self.ann_ids[rows])

    def category_slices(self) -> dict[str, tuple[int, int]]:
        names, starts, counts = np.unique(self.categories, return_index=True, return_counts=True)
        return {name.decode(): (int(start), int(start + count)) for name, start, count in zip(names, starts, counts)}


def as_bytes(values: list[str]) -> np.ndarray:
    """Fixed-width UTF-8 bytes (at least one byte wide, so that an empty list still has a dtype)."""
    return np.array([v.encode() for v in values], dtype="S") if values else np.zeros(0, dtype="S1")


def unsafe_ids(ids: np.ndarray) -> np.ndarray:
    """Rows whose id is absolute or climbs out of its root (``..``): never to be opened or shown."""
    if not len(ids):
        return np.zeros(0, dtype=np.int64)
    absolute = np.char.startswith(ids, b"/") | np.char.startswith(ids, b"\\") | (np.char.find(ids, b":") == 1)
    parts = np.char.add(np.char.add(b"/", np.char.replace(ids, b"\\", b"/")), b"/")
    return np.flatnonzero(absolute | (np.char.find(parts, b"/../") >= 0))


def create_file(temp: Path, count: int, dim: int, dtype: str, attrs: dict[str, Any]) -> h5py.File:
    """An index file of ``count`` rows to fill: ``embeddings`` contiguous (memory-mappable), metadata after."""
    handle = h5py.File(temp, "w")
    handle.attrs["format"] = FORMAT
    handle.attrs["meta"] = json.dumps(attrs, sort_keys=True)
    handle.create_dataset("embeddings", shape=(count, dim), dtype=dtype)
    return handle


def write_metadata(handle: h5py.File, index: IndexData) -> None:
    """Everything but the embeddings: ids, photos, products, categories, roots and the FAISS parts."""
    handle["ids"] = index.ids
    handle["photos"] = index.photos.astype(np.int64)
    handle["products"] = index.products.astype(np.int64)
    handle["categories"] = index.categories
    handle["roots"] = index.roots.astype(np.int16)
    if not index.ann:
        return
    handle["ann_ids"] = index.ann_ids.astype(np.int64)
    group = handle.require_group("ann")
    removed = handle.create_group("ann_removed")
    keys = {}
    for category, part in sorted(index.ann.items()):
        blob = part.blob
        if isinstance(blob, StoredBlob) and blob.file.filename == handle.filename:
            key = blob.name.rsplit("/", 1)[-1]  # written into this file as it was built
        else:
            key = free_key(group)
            if isinstance(blob, StoredBlob):
                handle.copy(blob.dataset, group, name=key)  # copied by HDF5 without reading it whole
            else:
                group.create_dataset(key, data=blob)
        removed.create_dataset(key, data=part.removed.astype(np.int64))
        keys[category] = {"key": key, **part.info}
    handle.attrs["ann"] = json.dumps(keys, sort_keys=True)


def free_key(group: h5py.Group) -> str:
    """The smallest number not yet a dataset name in ``group``."""
    return str(next(number for number in range(len(group) + 1) if str(number) not in group))


def part_dataset(handle: h5py.File) -> h5py.Dataset:
    """A new, growable ``uint8`` dataset under ``ann/`` of an index being written, for one serialised part."""
    group = handle.require_group("ann")
    return group.create_dataset(free_key(group), shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(1 << 20,))


def save_index(path: str | Path, index: IndexData, wait: bool = False) -> None:
    """Write a whole in-memory index atomically (fsync, rename), as the one writer of ``path`` (``common.WriterLock``):
    a failed write never harms an existing index.

    Raises:
        common.LockHeld: another run is writing ``path`` (and not ``wait``).
    """
    from common import WriterLock, atomic_path

    embeddings = np.asarray(index.embeddings)
    with WriterLock(path, wait=wait), atomic_path(path) as temp:
        dtype = "f2" if embeddings.dtype == np.float16 else "f4"
        with create_file(temp, len(index), embeddings.shape[1], dtype, index.attrs) as handle:
            for start in range(0, len(index), 1 << 14):
                handle["embeddings"][start:start + (1 << 14)] = embeddings[start:start + (1 << 14)]
            write_metadata(handle, index)


def _embeddings(handle: h5py.File, path: Path, mmap: bool) -> np.ndarray:
    """The embeddings, memory-mapped where the dataset is contiguous and ``mmap`` asked, else read."""
    data = handle["embeddings"]
    offset = data.id.get_offset() if mmap and data.chunks is None and data.compression is None else None
    if offset is None or not data.size:
        values = data[:]
        return values if values.dtype == np.float16 else values.astype(np.float32, copy=False)
    return np.memmap(path, dtype=data.dtype, mode="r", offset=offset, shape=data.shape)


def mapped_embeddings(handle: h5py.File) -> np.ndarray:
    """The embeddings of an open index file (flushed), memory-mapped where they are stored contiguously."""
    return _embeddings(handle, Path(handle.filename), mmap=True)


def _ann_parts(handle: h5py.File) -> dict[str, AnnPart]:
    """The FAISS parts, their bytes left in the file (``handle`` then stays open while they are referenced)."""
    if "ann" not in handle.attrs:
        return {}
    parts = {}
    for category, info in json.loads(handle.attrs["ann"]).items():
        key = info.pop("key")
        parts[category] = AnnPart(StoredBlob(handle, f"ann/{key}"), handle["ann_removed"][key][:], info)
    return parts


def load_index(path: str | Path, mmap: bool | None = None) -> IndexData:
    """Read an index; embeddings are memory-mapped when ``mmap`` (default: for approximate indexes).

    Raises:
        FileNotFoundError: no such file.
        IndexFileError: not an index of this project, unreadable, or with an id outside its image folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index does not exist (build one with python -m retrieval.index)")
    handle = None
    try:
        handle = h5py.File(path, "r")
        if handle.attrs.get("format") not in READABLE:
            raise IndexFileError(f"{path}: not an index of this project (no '{FORMAT}' format attribute)")
        ann = _ann_parts(handle)
        index = IndexData(
            embeddings=_embeddings(handle, path, bool(ann) if mmap is None else mmap),
            ids=handle["ids"][:], photos=handle["photos"][:], products=handle["products"][:],
            categories=handle["categories"][:], roots=handle["roots"][:],
            attrs=json.loads(handle.attrs["meta"]), ann=ann,
            ann_ids=handle["ann_ids"][:] if "ann_ids" in handle else None)
    except (OSError, KeyError, ValueError) as error:
        if handle is not None:
            handle.close()
        if isinstance(error, IndexFileError):
            raise
        raise IndexFileError(f"{path}: corrupt or unreadable index ({str(error).splitlines()[0][:160]})") from None
    if not ann:
        handle.close()  # else kept open by the parts, whose bytes are read when a ranker opens them
    bad = unsafe_ids(index.ids)
    if len(bad):
        raise IndexFileError(f"{path}: row {int(bad[0])} has the image path {index.id(int(bad[0]))!r}, outside its "
                             f"image folder; rebuild the index from a checked manifest")
    return index

