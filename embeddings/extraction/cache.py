"""The vector cache: one HDF5 file of ``ids`` (strings), ``vectors`` (float32, N x D) and attributes.

Appends go batch by batch in HDF5's single-writer/multiple-reader mode and are flushed, so a run
killed at any point leaves a readable file: rows count as written once their id is (vectors are
written first). A file left open by a killed run is repaired on the next ``CacheWriter`` by copying
its complete rows to a temporary file and renaming it over the old one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "street2shop-vectors/1"
# What must agree for two sets of vectors to be comparable.
IDENTITY = ("backbone", "layer", "weights", "input_size", "dim")


class CacheError(ValueError):
    """A cache that is missing, corrupt, or was built with another backbone or weights than asked for."""


@dataclass
class Vectors:
    """A cache read into memory: ``ids[i]`` names ``vectors[i]``; ``labels`` when built from a labelled folder."""

    ids: np.ndarray
    vectors: np.ndarray
    attrs: dict[str, Any]
    labels: np.ndarray | None = None

    def positions(self) -> dict[str, int]:
        """Row number of every id."""
        return {key: row for row, key in enumerate(self.ids)}

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """Row numbers of ``ids`` (KeyError naming the first missing one)."""
        position = self.positions()
        return np.array([position[key] for key in ids], dtype=np.int64)


def _open(path: Path) -> h5py.File:
    """Open for reading; a file a killed writer left open is read in SWMR mode."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: vector cache does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if "already open for write" not in str(error):
            raise CacheError(f"{path}: not a readable HDF5 vector cache ({error})") from None
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as error:
        raise CacheError(f"{path}: not a readable HDF5 vector cache ({error})") from None


def _attrs(handle: h5py.File) -> dict[str, Any]:
    raw = handle.attrs.get("meta")
    if raw is None or handle.attrs.get("format") != FORMAT:
        raise CacheError(f"{handle.filename}: not a vector cache of this project (no '{FORMAT}' format attribute)")
    return json.loads(raw)


def _decode(strings: np.ndarray) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else s for s in strings], dtype=object)


def check_identity(path: str | Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise ``CacheError`` naming each identity attribute that differs, expected vs actual."""
    wrong = [f"{key}: expected {expected[key]!r}, found {found.get(key)!r}"
             for key in IDENTITY if key in expected and found.get(key) != expected[key]]
    if wrong:
        raise CacheError(f"{path}: built with other settings ({'; '.join(wrong)})")


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a cache (backbone, layer, weights, input size, dim, versions)."""
    with _open(Path(path)) as handle:
        return _attrs(handle)


def read_vectors(path: str | Path, expected: dict[str, Any] | None = None) -> Vectors:
    """Load a cache into memory; with ``expected``, check that it was built the same way.

    Raises:
        FileNotFoundError, CacheError.
    """
    path = Path(path)
    with _open(path) as handle:
        attrs = _attrs(handle)
        if expected:
            check_identity(path, attrs, expected)
        count = handle["ids"].shape[0]
        ids = _decode(handle["ids"][:count])
        vectors = handle["vectors"][:count].astype(np.float32, copy=False)
        labels = _decode(handle["labels"][:count]) if "labels" in handle else None
    return Vectors(ids, vectors, attrs, labels)


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
    path = Path(path)
    temp = path.with_name(f".{path.name}.part")
    with h5py.File(temp, "w", libver="latest") as handle:  # superblock v3: SWMR appends can follow
        _create(handle, vectors.vectors.shape[1], vectors.attrs, with_labels=vectors.labels is not None)
        _append(handle, list(vectors.ids), vectors.vectors, None if vectors.labels is None else list(vectors.labels))
    os.replace(temp, path)


def _create(handle: h5py.File, dim: int, attrs: dict[str, Any], with_labels: bool) -> None:
    handle.attrs["format"] = FORMAT
    handle.attrs["meta"] = json.dumps(attrs, sort_keys=True)
    text = h5py.string_dtype()
    handle.create_dataset("vectors", shape=(0, dim), maxshape=(None, dim), dtype="f4",
                          chunks=(max(1, min(256, (1 << 20) // (4 * dim))), dim))
    handle.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=text, chunks=(4096,))
    if with_labels:
        handle.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=text, chunks=(4096,))


def _append(handle: h5py.File, ids: list[str], vectors: np.ndarray, labels: list[str] | None) -> None:
    start = handle["ids"].shape[0]
    end = start + len(ids)
    handle["vectors"].resize(end, axis=0)
    handle["vectors"][start:end] = vectors
    if labels is not None:
        handle["labels"].resize(end, axis=0)
        handle["labels"][start:end] = labels
    handle["ids"].resize(end, axis=0)  # last: a row exists once its id does
    handle["ids"][start:end] = ids


class CacheWriter:
    """Append vectors to a cache, creating or resuming it; ids already present are never written twice.

    Raises (on enter):
        CacheError: the existing file was built with other settings, or is not a cache.
    """

    def __init__(self, path: str | Path, attrs: dict[str, Any], labelled: bool = False) -> None:
        self.path = Path(path)
        self.attrs = dict(attrs, versions=versions())
        self.labelled = labelled
        self.ids: set[str] = set()
        self._handle: h5py.File | None = None

    def __enter__(self) -> "CacheWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            existing = read_vectors(self.path, expected=self.attrs)
            if self.labelled and existing.labels is None:
                raise CacheError(f"{self.path}: has no labels but this build is of a labelled folder")
            self.ids = set(existing.ids)
            try:
                self._handle = h5py.File(self.path, "a", libver="latest")
            except OSError:  # left open by a killed run: keep its complete rows
                logger.warning("%s was not closed cleanly; keeping its %d complete rows", self.path, len(self.ids))
                write_vectors(self.path, existing)
                self._handle = h5py.File(self.path, "a", libver="latest")
        else:
            temp = self.path.with_name(f".{self.path.name}.part")
            with h5py.File(temp, "w", libver="latest") as handle:
                _create(handle, self.attrs["dim"], self.attrs, with_labels=self.labelled)
            os.replace(temp, self.path)
            self._handle = h5py.File(self.path, "a", libver="latest")
        self._handle.swmr_mode = True
        return self

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
        _append(self._handle, [ids[i] for i in keep], vectors[keep],
                [labels[i] for i in keep] if self.labelled and labels is not None else None)
        self._handle.flush()
        self.ids.update(ids[i] for i in keep)
        return len(keep)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
