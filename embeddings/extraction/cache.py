"""The vector cache: one HDF5 file of ``ids`` (strings), ``vectors`` (float32, N x D) and attributes.

Appends go batch by batch in HDF5's single-writer/multiple-reader mode and are flushed, so a run
killed at any point leaves a readable file: rows count as written once their id is (vectors are
written first). One writer at a time: ``CacheWriter`` holds ``common.WriterLock`` on the file. A
file left open by a killed run is repaired, under that lock, by copying its complete rows in chunks
to a temporary file renamed over the old one.

Reading is bounded by a chunk, not by the cache: ``read_ids`` (ids only), ``iter_chunks`` (rows in
order), ``read_rows`` (the rows asked for); ``read_vectors`` loads everything (small caches).
"""

from __future__ import annotations

import glob
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

from common import WriterLock, atomic_path

logger = logging.getLogger(__name__)

FORMAT = "street2shop-vectors/1"
# What must agree for two sets of vectors to be comparable.
IDENTITY = ("backbone", "layer", "weights", "input_size", "dim", "precision", "decode")
# What an older file (or description) that lacks an identity attribute was made with.
IDENTITY_DEFAULTS = {"precision": "float32", "decode": "exact"}
CHUNK_BYTES = 64 << 20  # default size of one chunk of vectors read or copied at a time
OPEN_WAIT = 5.0  # seconds a reader waits for a writer that holds HDF5's file lock while opening


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
    """Open for reading; a file a killed writer left open is read in SWMR mode. A writer holds HDF5's file
    lock for an instant while it opens the file (until SWMR is on): wait for it, up to ``OPEN_WAIT`` s."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: vector cache does not exist")
    deadline = time.monotonic() + OPEN_WAIT
    while True:
        try:
            return _open_once(path)
        except BlockingIOError as error:
            if time.monotonic() > deadline:
                raise CacheError(f"{path}: locked by another process for over {OPEN_WAIT:g} s ({error})") from None
            time.sleep(0.05)


def _open_once(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except BlockingIOError:
        raise
    except OSError as error:
        if "already open for write" not in str(error):
            raise CacheError(f"{path}: not a readable HDF5 vector cache ({error})") from None
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except BlockingIOError:
        raise
    except OSError as error:
        raise CacheError(f"{path}: not a readable HDF5 vector cache ({error})") from None


def _attrs(handle: h5py.File) -> dict[str, Any]:
    raw = handle.attrs.get("meta")
    if raw is None or handle.attrs.get("format") != FORMAT or "ids" not in handle or "vectors" not in handle:
        raise CacheError(f"{handle.filename}: not a vector cache of this project (no '{FORMAT}' format attribute)")
    return json.loads(raw)


def _decode(strings: np.ndarray) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else s for s in strings], dtype=object)


def _count(handle: h5py.File) -> int:
    """Complete rows: those whose id is written (a killed writer may leave extra vectors)."""
    return int(min(handle["ids"].shape[0], handle["vectors"].shape[0]))


def _chunk_rows(handle: h5py.File, chunk_rows: int | None) -> int:
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    return chunk_rows or max(1, CHUNK_BYTES // (4 * max(1, handle["vectors"].shape[1])))


def identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """The identity attributes of a cache's (or an extractor's) description, defaults filled in."""
    return {key: attrs.get(key, IDENTITY_DEFAULTS.get(key)) for key in IDENTITY
            if key in attrs or key in IDENTITY_DEFAULTS}


def check_identity(path: str | Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise ``CacheError`` naming each identity attribute that differs, expected vs actual.

    Attributes absent from ``expected`` are not compared, except precision and decode mode, which
    default to ``float32`` and ``exact`` on either side (files written before they were recorded).
    """
    found, wanted = identity(found), identity(expected)
    wrong = [f"{key}: expected {wanted[key]!r}, found {found.get(key)!r}"
             for key in IDENTITY if key in wanted and found.get(key) != wanted[key]]
    if wrong:
        raise CacheError(f"{path}: built with other settings ({'; '.join(wrong)})")


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a cache (backbone, layer, weights, input size, dim, versions)."""
    with _open(Path(path)) as handle:
        return _attrs(handle)


def _checked(handle: h5py.File, path: Path, expected: dict[str, Any] | None) -> dict[str, Any]:
    attrs = _attrs(handle)
    if expected:
        check_identity(path, attrs, expected)
    return attrs


def _read_ids(handle: h5py.File, count: int, step: int = 1 << 16) -> np.ndarray:
    out = np.empty(count, dtype=object)
    for start in range(0, count, step):
        out[start:start + step] = _decode(handle["ids"][start:min(count, start + step)])
    return out


def read_ids(path: str | Path, expected: dict[str, Any] | None = None) -> np.ndarray:
    """The ids of a cache, in row order, without reading its vectors (resume, selection).

    Raises:
        FileNotFoundError, CacheError.
    """
    path = Path(path)
    with _open(path) as handle:
        _checked(handle, path, expected)
        return _read_ids(handle, _count(handle))


def _chunks(handle: h5py.File, chunk_rows: int | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    count, step = _count(handle), _chunk_rows(handle, chunk_rows)
    labelled = "labels" in handle
    for start in range(0, count, step):
        end = min(count, start + step)
        yield (_decode(handle["ids"][start:end]), handle["vectors"][start:end].astype(np.float32, copy=False),
               _decode(handle["labels"][start:end]) if labelled else None)


@dataclass(frozen=True)
class CacheInfo:
    """What a cache holds, read without its rows: attributes, complete rows, dimension, whether labelled."""

    attrs: dict[str, Any]
    rows: int
    dim: int
    labelled: bool


def read_info(path: str | Path, expected: dict[str, Any] | None = None) -> CacheInfo:
    """Attributes, row count, dimension and labels flag of a cache.

    Raises:
        FileNotFoundError, CacheError.
    """
    path = Path(path)
    with _open(path) as handle:
        attrs = _checked(handle, path, expected)
        return CacheInfo(attrs, _count(handle), int(handle["vectors"].shape[1]), "labels" in handle)


def iter_labelled_chunks(path: str | Path, chunk_rows: int | None = None, expected: dict[str, Any] | None = None
                         ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """As ``iter_chunks``, with each chunk's labels (None for a cache without labels)."""
    path = Path(path)
    with _open(path) as handle:
        _checked(handle, path, expected)
        yield from _chunks(handle, chunk_rows)


def iter_chunks(path: str | Path, chunk_rows: int | None = None,
                expected: dict[str, Any] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(ids, vectors)`` of consecutive rows, ``chunk_rows`` at a time (default: about 64 MB of
    vectors), so that a cache of any size is read in bounded memory.

    Raises:
        FileNotFoundError, CacheError.
    """
    path = Path(path)
    with _open(path) as handle:
        _checked(handle, path, expected)
        for ids, vectors, _ in _chunks(handle, chunk_rows):
            yield ids, vectors


def read_rows(path: str | Path, rows_or_ids: Sequence[int] | Sequence[str] | np.ndarray,
              expected: dict[str, Any] | None = None, chunk_rows: int | None = None) -> Vectors:
    """Read only the rows asked for, in the order asked: row numbers (integers) or ids (strings).

    Memory is the rows returned plus one chunk: the cache is scanned in chunks and only the spans
    holding wanted rows are read.

    Raises:
        FileNotFoundError, CacheError (also when an id is not in the cache or a row is out of range).
    """
    path = Path(path)
    wanted = np.asarray(rows_or_ids)
    with _open(path) as handle:
        attrs = _checked(handle, path, expected)
        count = _count(handle)
        if wanted.size and wanted.dtype.kind in "iu":
            rows = wanted.astype(np.int64)
            bad = rows[(rows < 0) | (rows >= count)]
            if bad.size:
                raise CacheError(f"{path}: row {int(bad[0])} out of range (the cache has {count} rows)")
        else:
            rows = _rows_of(path, _read_ids(handle, count), wanted)
        ids, vectors, labels = _gather(handle, rows, _chunk_rows(handle, chunk_rows))
    return Vectors(ids, vectors, attrs, labels)


def _rows_of(path: Path, ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    position = {key: row for row, key in enumerate(ids)}
    rows = np.array([position.get(key, -1) for key in wanted.astype(object).ravel()], dtype=np.int64)
    if (rows < 0).any():
        missing = wanted.ravel()[rows < 0]
        raise CacheError(f"{path}: {len(missing)} of the ids asked for are not in the cache (first: {str(missing[0])!r})")
    return rows


def _gather(handle: h5py.File, rows: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    dim = handle["vectors"].shape[1]
    labelled = "labels" in handle
    unique, inverse = np.unique(rows, return_inverse=True)
    vectors = np.empty((len(unique), dim), np.float32)
    ids = np.empty(len(unique), dtype=object)
    labels = np.empty(len(unique), dtype=object) if labelled else None
    done = 0
    while done < len(unique):  # one span of at most ``step`` rows at a time
        upto = int(np.searchsorted(unique, unique[done] + step, side="left"))
        lo, hi = int(unique[done]), int(unique[upto - 1]) + 1
        pick = unique[done:upto] - lo
        vectors[done:upto] = handle["vectors"][lo:hi][pick]
        ids[done:upto] = _decode(handle["ids"][lo:hi][pick])
        if labels is not None:
            labels[done:upto] = _decode(handle["labels"][lo:hi][pick])
        done = upto
    inverse = inverse.ravel()
    return ids[inverse], vectors[inverse], None if labels is None else labels[inverse]


def read_vectors(path: str | Path, expected: dict[str, Any] | None = None) -> Vectors:
    """Load a whole cache into memory (small caches; see ``iter_chunks`` and ``read_rows`` for large ones);
    with ``expected``, check that it was built the same way.

    Raises:
        FileNotFoundError, CacheError.
    """
    path = Path(path)
    with _open(path) as handle:
        attrs = _checked(handle, path, expected)
        count = _count(handle)
        ids = _read_ids(handle, count)
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


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files that runs killed while writing ``path`` left beside it (``common.atomic_path``
    names them ``.<name>.<pid>.<thread>.part``). Only under ``path``'s writer lock: no live writer has one."""
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        if temp.is_file():
            logger.warning("%s: removing %s, left by a run that was killed while writing it", path, temp.name)
            temp.unlink(missing_ok=True)


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
            remove_stale_temps(self.path)
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
