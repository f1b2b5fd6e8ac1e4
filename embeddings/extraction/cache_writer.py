"""Writing the vector cache (see ``cache`` for its layout and reading): one writer at a time.

Appends go batch by batch in HDF5's single-writer/multiple-reader mode and are flushed, so a run
killed at any point leaves a readable file: rows count as written once their id is (vectors are
written first). ``CacheWriter`` holds ``common.WriterLock`` on the file. A file left open by a killed
run (or held open by a reader) is repaired, under that lock, by copying its complete rows in chunks to
a temporary file renamed over the old one.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from common import WriterLock, atomic_path

from .cache import FORMAT, CacheError, Vectors, _checked, _chunks, _count, _open, _read_ids

logger = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {"python": sys.version.split()[0]}
    for package in ("keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "h5py", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_vectors(path: str | Path, vectors: Vectors) -> None:
    """Write a whole cache at once, atomically (temporary file, then rename)."""
    with atomic_path(path) as temp:
        with h5py.File(temp, "w", libver="latest") as handle:  # superblock v3: SWMR appends can follow
            create(handle, vectors.vectors.shape[1], vectors.attrs, with_labels=vectors.labels is not None)
            append_rows(handle, list(vectors.ids), vectors.vectors,
                        None if vectors.labels is None else list(vectors.labels))


def create(handle: h5py.File, dim: int, attrs: dict[str, Any], with_labels: bool) -> None:
    """Lay out an empty cache in an open file."""
    handle.attrs["format"] = FORMAT
    handle.attrs["meta"] = json.dumps(attrs, sort_keys=True)
    text = h5py.string_dtype()
    handle.create_dataset("vectors", shape=(0, dim), maxshape=(None, dim), dtype="f4",
                          chunks=(max(1, min(256, (1 << 20) // (4 * dim))), dim))
    handle.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=text, chunks=(4096,))
    if with_labels:
        handle.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=text, chunks=(4096,))


def append_rows(handle: h5py.File, ids: list[str], vectors: np.ndarray, labels: list[str] | None) -> None:
    """Append rows to an open cache; the ids go last, so a row exists once its id does."""
    start = handle["ids"].shape[0]
    end = start + len(ids)
    handle["vectors"].resize(end, axis=0)
    handle["vectors"][start:end] = vectors
    if labels is not None:
        handle["labels"].resize(end, axis=0)
        handle["labels"][start:end] = labels
    handle["ids"].resize(end, axis=0)
    handle["ids"][start:end] = ids


def _replace_open(path: Path, fill: Callable[[h5py.File], None]) -> h5py.File:
    """Write a new file with ``fill`` under a temporary name, rename it over ``path`` and return it still open
    for appending: a reader that opens ``path`` at once cannot lock the writer out of it (HDF5's file lock)."""
    handle = None
    try:
        with atomic_path(path) as temp:
            handle = h5py.File(temp, "w", libver="latest")
            fill(handle)
            handle.flush()
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    return handle


def _repair(path: Path, attrs: dict[str, Any]) -> h5py.File:
    """Copy the complete rows of ``path`` (left open by a killed run, or held by a reader) to a new file, in
    chunks, and swap it in; returns the new file, open for appending."""
    with _open(path) as source:
        def copy(target: h5py.File) -> None:
            create(target, source["vectors"].shape[1], attrs, with_labels="labels" in source)
            for ids, vectors, labels in _chunks(source, None):
                append_rows(target, list(ids), vectors, None if labels is None else list(labels))

        return _replace_open(path, copy)


class CacheWriter:
    """Append vectors to a cache, creating or resuming it; ids already present are never written twice.

    Holds the cache's writer lock from enter to exit; ``wait`` waits for another writer to finish
    instead of failing.

    Raises (on enter):
        common.LockHeld: another live process is writing this cache (and not ``wait``).
        CacheError: the existing file was built with other settings, or is not a cache.
    """

    def __init__(self, path: str | Path, attrs: dict[str, Any], labelled: bool = False, *, wait: bool = False) -> None:
        self.path = Path(path)
        self.attrs = dict(attrs, versions=versions())
        self.labelled = labelled
        self.wait = wait
        self.ids: set[str] = set()
        self._handle: h5py.File | None = None
        self._lock: WriterLock | None = None

    def __enter__(self) -> "CacheWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(self.path, wait=self.wait)
        lock.__enter__()
        try:
            self._handle = self._open()
            self._handle.swmr_mode = True
        except BaseException:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            lock.__exit__(None, None, None)
            raise
        self._lock = lock
        return self

    def _open(self) -> h5py.File:
        """Create the file, or resume it (reading its ids only); repair it if a killed run left it open."""
        if not self.path.exists():
            return _replace_open(self.path, lambda handle: create(handle, self.attrs["dim"], self.attrs,
                                                                  with_labels=self.labelled))
        with _open(self.path) as handle:
            found = _checked(handle, self.path, self.attrs)
            if self.labelled != ("labels" in handle):  # rows without labels would misalign the labels column
                raise CacheError(f"{self.path}: has no labels but this build is of a labelled folder" if self.labelled
                                 else f"{self.path}: has labels but this build has none; write to another file")
            self.ids = set(_read_ids(handle, _count(handle)))
        try:
            return h5py.File(self.path, "a", libver="latest")
        except OSError as error:  # we hold the lock: no other writer; copy the complete rows to a new file
            if "already open for write" in str(error):
                logger.warning("%s was not closed cleanly (a killed run?); keeping its %d complete rows",
                               self.path, len(self.ids))
            else:  # HDF5's own file lock: a reader has it open, and goes on reading the old file
                logger.warning("%s is open in another process (%s); appending to a copy of its %d rows",
                               self.path, str(error).splitlines()[0][:120], len(self.ids))
            return _repair(self.path, found)

    def append(self, ids: list[str], vectors: np.ndarray, labels: list[str] | None = None) -> int:
        """Write the rows whose ids are new, and flush; returns how many were written."""
        if self._handle is None:
            raise RuntimeError("CacheWriter used outside its 'with' block")
        if vectors.shape != (len(ids), self.attrs["dim"]):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.attrs['dim']}), got {vectors.shape}")
        keep = [i for i, key in enumerate(ids) if key not in self.ids]
        if len(set(ids[i] for i in keep)) != len(keep):
            raise ValueError("duplicate ids in one batch")
        if not keep:
            return 0
        if self.labelled and labels is None:
            raise ValueError("this cache is labelled: pass labels")
        append_rows(self._handle, [ids[i] for i in keep], vectors[keep],
                    [labels[i] for i in keep] if self.labelled and labels is not None else None)
        self._handle.flush()
        self.ids.update(ids[i] for i in keep)
        return len(keep)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
        finally:
            if self._lock is not None:
                self._lock.__exit__(*exc)
                self._lock = None
