"""Split a build into shards and join the shard caches back, checking that they agree."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from .cache import CacheError, Vectors, check_identity, read_vectors, write_vectors


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Deterministic split of ids over ``N`` builds: part ``I`` holds the ids whose CRC-32 is I modulo N."""
    index, count = shard
    return count == 1 or zlib.crc32(key.encode()) % count == index


def merge(parts: Sequence[str | Path], out: str | Path) -> Vectors:
    """Concatenate ``parts`` (first occurrence of an id wins) and write ``out`` atomically.

    Raises:
        CacheError: the parts disagree on backbone, layer, weights, input size or dim, or one has
            labels and another not.
        FileNotFoundError: a part is missing.
    """
    if not parts:
        raise ValueError("nothing to merge: give at least one cache")
    loaded = [read_vectors(part) for part in parts]
    first = loaded[0]
    for part, vectors in zip(parts[1:], loaded[1:]):
        check_identity(part, vectors.attrs, first.attrs)
        if (vectors.labels is None) != (first.labels is None):
            raise CacheError(f"{part}: labels present in some parts and not in others")
    ids = np.concatenate([v.ids for v in loaded])
    _, keep = np.unique(ids, return_index=True)
    keep.sort()
    merged = Vectors(
        ids=ids[keep],
        vectors=np.concatenate([v.vectors for v in loaded])[keep],
        attrs=dict(first.attrs, merged_from=[str(p) for p in parts]),
        labels=None if first.labels is None else np.concatenate([v.labels for v in loaded])[keep],
    )
    write_vectors(out, merged)
    return merged
