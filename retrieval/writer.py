"""Writer: build, extend or shrink an index file in bounded memory, one writer at a time, atomically.

Rows are planned first (metadata only), sorted by category, then their embeddings are written a
chunk at a time: from the vector cache through the head for new rows, from the old file for kept
rows. FAISS parts are built per category from the rows just written. The new file replaces the old
only once complete and flushed (``common.atomic_path``), under ``common.WriterLock``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from common import WriterLock, atomic_path, iter_manifest
from embeddings.extraction.cache import check_identity, read_attrs, read_ids, read_rows, versions

from .store import IndexData, IndexFileError, as_bytes, create_file, load_index, mapped_embeddings, write_metadata
from .tuning import AnnConfig, choose

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20


@dataclass
class Plan:
    """Rows to write: metadata, and where each row's embedding comes from (``cache_rows`` >= 0: the cache,
    else ``old_rows``: the existing index)."""

    meta: IndexData
    cache_rows: np.ndarray
    old_rows: np.ndarray


PLAN_BLOCK = 1 << 16  # manifest entries gathered into arrays at a time


def shop_plan(vectors: Path, manifest: Path, categories: list[str] | None, skip: np.ndarray,
              strict: bool, dim: int) -> Plan:
    """The manifest's shop photos with a cached vector (the first line of each image path), minus the ``skip``
    ids (bytes). Kept as arrays, matched to the cache's ids by sorting: at 10M photos, Python objects and
    dicts for every line and id would take gigabytes."""
    problems: list[str] = []
    columns: dict[str, list[np.ndarray]] = {"ids": [], "photos": [], "products": [], "categories": []}
    pending: list[Any] = []

    def gather() -> None:
        if pending:
            columns["ids"].append(as_bytes([e.path for e in pending]))
            columns["photos"].append(np.array([e.photo for e in pending], dtype=np.int64))
            columns["products"].append(np.array([e.product for e in pending], dtype=np.int64))
            columns["categories"].append(as_bytes([e.category for e in pending]))
            pending.clear()

    for entry in iter_manifest(manifest, strict=strict, problems=problems):
        if entry.kind == "shop" and (not categories or entry.category in categories):
            pending.append(entry)
            if len(pending) >= PLAN_BLOCK:
                gather()
    gather()
    for problem in problems[:20]:
        logger.warning("skipped %s", problem)
    ids, photos, products, names = (np.concatenate(columns[key]) if columns[key] else
                                    np.zeros(0, np.int64 if key in ("photos", "products") else "S1")
                                    for key in ("ids", "photos", "products", "categories"))
    first = np.sort(np.unique(ids, return_index=True)[1])  # an image path's first line wins, file order kept
    ids, photos, products, names = ids[first], photos[first], products[first], names[first]
    cached = read_ids(vectors)
    cached = np.concatenate([as_bytes(list(cached[start:start + PLAN_BLOCK]))
                             for start in range(0, len(cached), PLAN_BLOCK)] or [np.zeros(0, "S1")])
    order = np.argsort(cached, kind="stable")
    cached = cached[order]  # sorted: each path's row found by binary search
    at = np.minimum(np.searchsorted(cached, ids), max(len(cached) - 1, 0))
    found = (cached[at] == ids) if len(cached) else np.zeros(len(ids), dtype=bool)
    if (~found).any():
        logger.warning("%d shop photos of the manifest have no cached vector and are left out", int((~found).sum()))
    keep = found & ~np.isin(ids, skip)
    rows = order[at[keep]] if len(cached) else np.zeros(0, np.int64)
    meta = IndexData(np.zeros((0, dim), np.float32), ids[keep], photos[keep], products[keep], names[keep],
                     np.zeros(int(keep.sum()), dtype=np.int16))
    return Plan(meta, rows.astype(np.int64), np.full(int(keep.sum()), -1, np.int64))


def index_attrs(vectors: Path, manifest: Path, head: Any | None, dtype: str) -> dict[str, Any]:
    cache = read_attrs(vectors)
    if head is not None:
        check_identity(vectors, cache, {k: v for k, v in head.backbone.items() if k != "file"})
    backbone = {key: cache.get(key) for key in ("backbone", "layer", "weights", "input_size", "dim")}
    for key in ("weights_file", "precision", "decode"):
        if key in cache:
            backbone[key] = cache[key]
    return {"backbone": backbone,
            "head": None if head is None else {"identity": head.identity, "path": str(Path(head.path).resolve()),
                                               "dim": head.dim},
            "metric": "euclidean" if head is not None else "cosine", "dtype": dtype,
            "roots": [str(Path(manifest).resolve().parent)], "versions": versions()}


def same_maker(path: str | Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raise unless rows to add were made by the same backbone, weights and head as the index."""
    check_identity(path, found["backbone"], wanted["backbone"])
    old_head = (found.get("head") or {}).get("identity")
    new_head = (wanted.get("head") or {}).get("identity")
    if old_head != new_head:
        raise IndexFileError(f"{path}: built with head {old_head or 'none (raw vectors)'}, "
                             f"not {new_head or 'none (raw vectors)'}")


def merge(old: IndexData, new: Plan, new_attrs: dict[str, Any]) -> Plan:
    """The old index's rows and the new ones, sorted by category (``new``'s image root joins the roots)."""
    roots = list(old.attrs["roots"])
    if new_attrs["roots"][0] not in roots:
        roots.append(new_attrs["roots"][0])
    m = new.meta
    ann_ids = None if old.ann_ids is None else np.concatenate([old.ann_ids, np.full(len(m), -1, np.int64)])
    meta = IndexData(np.zeros((0, 1)), np.concatenate([old.ids, m.ids]),
                     np.concatenate([old.photos, m.photos]), np.concatenate([old.products, m.products]),
                     np.concatenate([old.categories, m.categories]),
                     np.concatenate([old.roots, np.full(len(m), roots.index(new_attrs["roots"][0]), np.int16)]),
                     dict(old.attrs, roots=roots), old.ann, ann_ids)
    cache_rows = np.concatenate([np.full(len(old), -1, np.int64), new.cache_rows])
    old_rows = np.concatenate([np.arange(len(old)), np.full(len(m), -1, np.int64)])
    return Plan(meta, cache_rows, old_rows)


def sort_plan(plan: Plan) -> Plan:
    m = plan.meta
    order = np.lexsort((m.photos, m.products, m.categories))
    meta = IndexData(m.embeddings, m.ids[order], m.photos[order], m.products[order], m.categories[order],
                     m.roots[order], m.attrs, m.ann, None if m.ann_ids is None else m.ann_ids[order])
    return Plan(meta, plan.cache_rows[order], plan.old_rows[order])


def _chunks(count: int, dim: int) -> Iterable[tuple[int, int]]:
    step = max(1, CHUNK_BYTES // (4 * max(dim, 1)))
    return ((start, min(count, start + step)) for start in range(0, count, step))


def write_embeddings(data: h5py.Dataset, plan: Plan, vectors: Path | None, head: Any | None,
                     old: np.ndarray | None) -> None:
    """Fill ``data`` chunk by chunk: cache rows (through the head) and old-index rows."""
    read_dim = int(head.model.input.shape[-1]) if head is not None else data.shape[1]
    for start, stop in _chunks(len(plan.meta), max(data.shape[1], read_dim)):
        block = np.empty((stop - start, data.shape[1]), np.float32)
        cache_rows, old_rows = plan.cache_rows[start:stop], plan.old_rows[start:stop]
        new = cache_rows >= 0
        if new.any():
            raw = read_rows(vectors, cache_rows[new], chunk_rows=stop - start).vectors
            block[new] = head.embed(raw) if head is not None else raw
        if (~new).any():
            block[~new] = old[old_rows[~new]]
        data[start:stop] = block.astype(data.dtype, copy=False)


def build_ann(handle: h5py.File, meta: IndexData, config: AnnConfig, added: np.ndarray | None) -> None:
    """FAISS parts per category: new ones for categories without one (as ``config`` chooses), the ``added``
    rows appended to existing ones, each written into ``handle`` as soon as it is made, from the embeddings
    just written (memory-mapped: read a block at a time). Sets ``meta.ann``, ``meta.ann_ids`` and the
    recorded choice."""
    from .ann import extend_part, make_part

    handle.flush()
    embeddings = mapped_embeddings(handle)
    metric, dim, parts = meta.attrs["metric"], embeddings.shape[1], dict(meta.ann)
    ann_ids = meta.ann_ids if meta.ann_ids is not None else np.full(len(meta), -1, np.int64)
    for category, (start, stop) in meta.category_slices().items():
        budget = int(config.max_memory * (stop - start) / max(len(meta), 1))
        if category in parts:
            fresh = np.flatnonzero(ann_ids[start:stop] < 0) + start if added is not None else np.zeros(0, np.int64)
            if len(fresh):
                parts[category], ann_ids[fresh] = extend_part(handle, parts[category], embeddings[np.sort(fresh)],
                                                              metric, category)
            continue
        factory = choose(stop - start, dim, budget, config) if not meta.ann or config.method != "exact" else None
        if factory is None:
            continue
        logger.info("category %s: %d rows, building %s", category, stop - start, factory)
        try:
            parts[category], ann_ids[start:stop] = make_part(handle, embeddings[start:stop], metric, factory, config)
        except ValueError as error:
            raise ValueError(f"category {category} ({stop - start} rows): {error}") from None
    meta.ann, meta.ann_ids = parts, ann_ids if parts else None
    meta.attrs["ann"] = {c: {k: v for k, v in p.info.items()} for c, p in parts.items()} or None


def build_index(vectors: str | Path, manifest: str | Path, out: str | Path, head: str | Path | None = None,
                categories: list[str] | None = None, add: bool = False, strict: bool = False,
                ann: AnnConfig | None = None, dtype: str = "float32", wait: bool = False) -> tuple[IndexData, int]:
    """Embed the shop vectors with ``head`` (raw vectors if None) and write ``out``; with ``add``, append the
    photos not yet in the existing ``out`` (same backbone, weights and head required), without re-embedding
    the others. Returns the index (embeddings memory-mapped) and the number of rows added.

    Raises:
        FileNotFoundError, IndexFileError, CacheError, ManifestError, LockHeld, ValueError: named inputs.
    """
    from embeddings.learning.head import load_head

    ann = ann or AnnConfig()
    ann.validate()
    if dtype not in ("float32", "float16"):
        raise ValueError(f"--dtype must be float32 or float16, got {dtype!r}")
    vectors, manifest, out = Path(vectors), Path(manifest), Path(out)
    for path, what in ((vectors, "vector cache"), (manifest, "manifest")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {what} does not exist")
    loaded_head = load_head(head) if head is not None else None
    with WriterLock(out, wait=wait):
        old = load_index(out, mmap=True) if add and out.exists() else None
        attrs = index_attrs(vectors, manifest, loaded_head, old.attrs.get("dtype", "float32") if old else dtype)
        dim = loaded_head.dim if loaded_head is not None else int(attrs["backbone"]["dim"])
        ann.check_factory(dim)
        plan = shop_plan(vectors, manifest, categories, old.ids if old is not None else np.zeros(0, "S1"), strict, dim)
        added = len(plan.meta)
        if old is not None:
            same_maker(out, old.attrs, attrs)
            plan = merge(old, plan, attrs)
        else:
            plan.meta.attrs = attrs
        plan = sort_plan(plan)
        if old is not None and old.ann and ann.method == "exact":
            ann = AnnConfig(**(old.attrs.get("ann_config") or {"method": "auto"}))  # new categories as before
        plan.meta.attrs["ann_config"] = {"method": ann.method, "max_memory": ann.max_memory,
                                         "target_recall": ann.target_recall, "exact_below": ann.exact_below}
        if not len(plan.meta):
            raise IndexFileError(f"{manifest}: no shop photo with a cached vector"
                                 + (f" in categories {categories}" if categories else "") + ": the index would be empty")
        write(out, plan, vectors, loaded_head, None if old is None else old.embeddings, ann, add=old is not None)
    return load_index(out, mmap=True), added


def write(out: Path, plan: Plan, vectors: Path | None, head: Any | None, old: np.ndarray | None,
          ann: AnnConfig, add: bool) -> None:
    meta = plan.meta
    dim = head.dim if head is not None else (old.shape[1] if old is not None else int(meta.attrs["backbone"]["dim"]))
    with atomic_path(out) as temp:
        with create_file(temp, len(meta), dim, "f2" if meta.attrs.get("dtype") == "float16" else "f4",
                         meta.attrs) as handle:
            write_embeddings(handle["embeddings"], plan, vectors, head, old)
            if ann.method != "exact" or meta.ann:
                build_ann(handle, meta, ann, plan.cache_rows if add else None)
                handle.attrs["meta"] = json.dumps(meta.attrs, sort_keys=True)
            write_metadata(handle, meta)


def remove_products(out: str | Path, products: Iterable[int], wait: bool = False) -> tuple[IndexData, int]:
    """Remove every photo of ``products`` from ``out`` in place (atomically), exact or approximate: kept rows are
    copied as they are, FAISS parts skip the removed rows from now on. Returns the index and the rows removed.

    Raises:
        FileNotFoundError, IndexFileError, LockHeld, ValueError (nothing would be left).
    """
    from .ann import check_removed

    out = Path(out)
    wanted = np.unique(np.fromiter((int(p) for p in products), dtype=np.int64))
    with WriterLock(out, wait=wait):
        old = load_index(out, mmap=True)
        gone = np.isin(old.products, wanted)
        if not gone.any():
            return old, 0
        if gone.all():
            raise ValueError(f"{out}: removing these products would leave the index empty")
        keep = np.flatnonzero(~gone)
        meta = IndexData(np.zeros((0, 1)), old.ids[keep], old.photos[keep], old.products[keep], old.categories[keep],
                         old.roots[keep], dict(old.attrs), dict(old.ann),
                         None if old.ann_ids is None else old.ann_ids[keep])
        for category, part in old.ann.items():
            in_category = gone & (old.categories == category.encode())
            removed = np.union1d(part.removed, old.ann_ids[in_category])
            if (meta.categories == category.encode()).any():
                meta.ann[category] = type(part)(part.blob, removed, dict(part.info, removed_rows=int(len(removed))))
                if len(removed) > len(part.removed):
                    check_removed(meta.ann[category], category)
            else:
                del meta.ann[category]
        meta.attrs["ann"] = {c: dict(p.info) for c, p in meta.ann.items()} or None
        if old.ann and not meta.ann:
            meta.ann_ids = None
        plan = Plan(meta, np.full(len(keep), -1, np.int64), keep)
        write(out, plan, None, None, old.embeddings, AnnConfig(), add=False)
    return load_index(out, mmap=True), int(gone.sum())
