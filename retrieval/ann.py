"""Approximate search over an index's FAISS parts, with the exact ranker's interface.

Each category with a FAISS part is searched through it (removed rows skipped by an ID selector),
the others exactly; FAISS proposes candidates and their distances are then computed exactly in
float64 from the stored embeddings (as ``cdist`` would), so distances and scores mean the same as
in an exact index. Cosine indexes hold unit-length vectors in FAISS (L2 then orders like cosine).
"""

from __future__ import annotations

import logging
from typing import Any

import h5py
import numpy as np

from .ranking import Ranker
from .store import AnnPart, IndexData, StoredBlob, part_dataset
from .tuning import AnnConfig, build_part, depth, for_faiss, search_params

logger = logging.getLogger(__name__)

STALE_SHARE = 0.2  # rows added after training beyond which a rebuild is advised
IO_BLOCK = 16 << 20  # bytes a serialised FAISS index is written or read at a time


class _PartReader:
    """Serves FAISS's many small reads from blocks of ``IO_BLOCK`` bytes read from a part's dataset."""

    def __init__(self, data: h5py.Dataset) -> None:
        self.data, self.position, self.buffer, self.offset = data, 0, memoryview(b""), 0

    def __call__(self, size: int) -> bytes:
        if self.offset + size > len(self.buffer):
            rest = bytes(self.buffer[self.offset:])
            more = self.data[self.position:self.position + max(IO_BLOCK, size - len(rest))].tobytes()
            self.position += len(more)
            self.buffer, self.offset = memoryview(rest + more), 0
        chunk = bytes(self.buffer[self.offset:self.offset + size])
        self.offset += len(chunk)
        return chunk


class _PartWriter:
    """Gathers FAISS's many small writes (a few per inverted list) into blocks of ``IO_BLOCK`` bytes appended to
    a growable dataset: one HDF5 resize and write a block, not one per FAISS write."""

    def __init__(self, data: h5py.Dataset) -> None:
        self.data, self.pending, self.size = data, [], 0

    def __call__(self, chunk: bytes) -> int:
        self.pending.append(bytes(chunk))
        self.size += len(chunk)
        if self.size >= IO_BLOCK:
            self.flush()
        return len(chunk)

    def flush(self) -> None:
        if not self.pending:
            return
        block = np.frombuffer(b"".join(self.pending), np.uint8)
        start = self.data.shape[0]
        self.data.resize((start + len(block),))
        self.data[start:] = block
        self.pending, self.size = [], 0


def open_part(blob: np.ndarray | StoredBlob) -> Any:
    """The FAISS index of a part: from bytes in memory, or read from its index file a block at a time (a
    serialised index is never held in memory beside the index it becomes)."""
    import faiss

    if not isinstance(blob, StoredBlob):
        return faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
    return faiss.read_index(faiss.PyCallbackIOReader(_PartReader(blob.dataset), IO_BLOCK))


def store_part(handle: h5py.File, index: Any) -> StoredBlob:
    """Serialise ``index`` into a new dataset of the index file being written, a block at a time."""
    import faiss

    data = part_dataset(handle)
    writer = _PartWriter(data)
    faiss.write_index(index, faiss.PyCallbackIOWriter(writer, IO_BLOCK))
    writer.flush()
    return StoredBlob(handle, data.name)


def make_part(handle: h5py.File, vectors: np.ndarray, metric: str, factory: str,
              config: AnnConfig) -> tuple[AnnPart, np.ndarray]:
    """A tuned FAISS part over one category's rows (may be memory-mapped: read a block at a time), written into
    ``handle`` at once; returns it and the FAISS id of each row (0..n-1)."""
    index, info = build_part(vectors, metric, factory, config)
    return AnnPart(store_part(handle, index), np.zeros(0, np.int64), info), np.arange(len(vectors), dtype=np.int64)


def extend_part(handle: h5py.File, part: AnnPart, vectors: np.ndarray, metric: str,
                category: str) -> tuple[AnnPart, np.ndarray]:
    """Add rows to a part without retraining, written into ``handle``; returns it and the new rows' FAISS ids.
    Warns when the rows added since training are so many that the quantiser no longer describes the data well."""
    index = open_part(part.blob)
    first = index.ntotal
    for start in range(0, len(vectors), 1 << 16):
        index.add(for_faiss(vectors[start:start + (1 << 16)], metric))
    info = dict(part.info, rows=int(index.ntotal), added_rows=int(part.info.get("added_rows", 0) + len(vectors)))
    if info["added_rows"] > STALE_SHARE * info["trained_rows"] and not info["factory"].startswith("HNSW"):
        logger.warning("category %s: %d rows added since its %s quantiser was trained on %d: its lists are getting "
                       "stale; rebuild the index (python -m retrieval.index without --add) for full recall",
                       category, info["added_rows"], info["factory"], info["trained_rows"])
    return AnnPart(store_part(handle, index), part.removed, info), np.arange(first, index.ntotal, dtype=np.int64)


def check_removed(part: AnnPart, category: str) -> None:
    """Warn when so many of a part's rows are removed (still in its graph or lists, skipped) that the recall
    measured at build time no longer holds."""
    removed, rows = len(part.removed), int(part.info.get("rows", 0))
    if rows and removed > STALE_SHARE * rows:
        logger.warning("category %s: %d of the %d rows of its %s index are removed (skipped at every search): "
                       "recall and speed fall below those measured; rebuild the index from a manifest without "
                       "those products", category, removed, rows, part.info.get("factory"))


class AnnRanker:
    """``search(queries, k, start, stop)`` like ``Ranker``, over FAISS parts where the index has them.

    A range must be whole categories (the engine asks for one category or all); results may hold fewer
    than k rows where FAISS finds fewer (padded with row -1, distance inf).
    """

    def __init__(self, index: IndexData, metric: str) -> None:
        self.index, self.metric = index, metric
        self.slices = index.category_slices()
        self.exact = Ranker(np.zeros((0, index.embeddings.shape[1]), np.float32), metric)
        self.exact.vectors = index.embeddings  # exact distances of candidates only: never scanned whole
        self._parts: dict[str, tuple[Any, Any, np.ndarray, Any]] = {}
        self._rankers: dict[str, Ranker] = {}
        for category, (start, stop) in self.slices.items():
            part = index.ann.get(category)
            if part is None:
                self._rankers[category] = Ranker(index.embeddings[start:stop], metric)
                continue
            faiss_index = open_part(part.blob)
            to_row = np.full(faiss_index.ntotal, -1, dtype=np.int64)
            to_row[index.ann_ids[start:stop]] = np.arange(start, stop)
            selector = _selector(part.removed)
            params = search_params(faiss_index, part.info.get("value", 0), selector)
            self._parts[category] = (faiss_index, selector, to_row, params)

    def _category(self, queries: np.ndarray, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        start, stop = self.slices[category]
        if category in self._rankers:
            rows, distances = self._rankers[category].search(queries, k)
            return rows + start, distances
        faiss_index, _, to_row, params = self._parts[category]
        _, found = faiss_index.search(for_faiss(queries, self.metric), min(stop - start, depth(k)), params=params)
        rows = np.where(found >= 0, to_row[np.clip(found, 0, None)], -1)
        distances = np.full(rows.shape, np.inf)
        valid = rows >= 0
        if valid.any():
            exact = self.exact.exact(queries, np.where(valid, rows, 0))
            distances = np.where(valid, exact, np.inf)
        order = np.lexsort((np.where(valid, rows, np.iinfo(np.int64).max), distances), axis=1)[:, :k]
        return np.take_along_axis(rows, order, axis=1), np.take_along_axis(distances, order, axis=1)

    def search(self, queries: np.ndarray, k: int = 10, start: int = 0,
               stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of the categories in ``start:stop``: ``(rows, distances)``, nearest first."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        stop = len(self.index) if stop is None else stop
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        inside = [c for c, (a, b) in self.slices.items() if start <= a and b <= stop]
        if not inside:
            raise ValueError(f"nothing to rank: rows {start}:{stop} hold no whole category")
        found = [self._category(queries, k, c) for c in inside]
        rows = np.concatenate([f[0] for f in found], axis=1)
        distances = np.concatenate([f[1] for f in found], axis=1)
        order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), distances), axis=1)
        order = order[:, : min(k, stop - start)]
        return np.take_along_axis(rows, order, axis=1), np.take_along_axis(distances, order, axis=1)


def _selector(removed: np.ndarray) -> Any:
    """Skip removed FAISS ids (None when nothing was removed)."""
    if not len(removed):
        return None
    import faiss

    removed = np.ascontiguousarray(removed, dtype=np.int64)
    batch = faiss.IDSelectorBatch(len(removed), faiss.swig_ptr(removed))
    selector = faiss.IDSelectorNot(batch)
    selector.referenced = (batch, removed)  # keep the C++ objects' inputs alive
    return selector
