"""The vector cache: one HDF5 file of ``ids`` (strings), ``vectors`` (float32, N x D) and attributes; reading it.

Reading is bounded by a chunk, not by the cache: ``read_ids`` (ids only), ``iter_chunks`` (rows in
order), ``read_rows`` (the rows asked for); ``read_vectors`` loads everything (small caches). Writing
(``CacheWriter``, ``write_vectors``: one writer at a time, SWMR appends, repair of a killed run's file)
is in ``cache_writer``; its names are importable from here too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np

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


_WRITING = ("CacheWriter", "append_rows", "create", "versions", "write_vectors")


def __getattr__(name: str) -> Any:
    """The writing half lives in ``cache_writer`` (imported on first use: it imports this module)."""
    if name in _WRITING:
        from . import cache_writer

        return getattr(cache_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
