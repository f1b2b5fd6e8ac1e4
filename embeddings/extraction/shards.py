"""Split a build into shards and join the shard caches back, checking that they agree.

Merging streams: every part is copied chunk by chunk into a temporary file renamed over the output,
so memory is one chunk plus the set of ids seen, whatever the size of the parts.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
from tqdm import tqdm

from common import WriterLock, atomic_path

from .cache import CacheError, CacheInfo, check_identity, iter_labelled_chunks, read_info
from .cache_writer import append_rows, create

logger = logging.getLogger(__name__)


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Deterministic split of ids over ``N`` builds: part ``I`` holds the ids whose CRC-32 is I modulo N."""
    index, count = shard
    return count == 1 or zlib.crc32(key.encode()) % count == index


@dataclass
class MergeSummary:
    """What a merge wrote: ``rows`` vectors into ``out``, ``duplicates`` rows skipped (an id seen before)."""

    out: Path
    rows: int = 0
    duplicates: int = 0
    parts: list[Path] = field(default_factory=list)


def _check_parts(parts: list[Path], out: Path) -> list[CacheInfo]:
    if not parts:
        raise ValueError("nothing to merge: give at least one cache")
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; give the merged cache's file name")
    if any(part.resolve() == out.resolve() for part in parts if part.exists()):
        raise ValueError(f"{out}: is also one of the parts; write the merge to a new file")
    infos = [read_info(part) for part in parts]
    for part, info in zip(parts[1:], infos[1:]):
        check_identity(part, info.attrs, infos[0].attrs)
        if info.labelled != infos[0].labelled:
            raise CacheError(f"{part}: labels present in some parts and not in others")
    return infos


def _lock_parts(stack: contextlib.ExitStack, parts: list[Path], wait: bool) -> None:
    """Hold each part's writer lock, so that no build appends to it while it is copied."""
    for part in dict.fromkeys(part.resolve() for part in parts):
        try:
            stack.enter_context(WriterLock(part, wait=wait))
        except PermissionError:  # a read-only folder: nobody can be writing there either
            logger.debug("%s: read-only, not locked", part)


def merge(parts: Sequence[str | Path], out: str | Path, wait: bool = False, chunk_rows: int | None = None,
          progress: bool = False) -> MergeSummary:
    """Copy ``parts`` into ``out`` in order, chunk by chunk (the first occurrence of an id wins), atomically.

    Raises:
        FileNotFoundError: a part is missing.
        CacheError: a part is not a cache, or the parts disagree on backbone, layer, weights, input size,
            dim, precision or decode mode, or one has labels and another not.
        ValueError: no parts, or ``out`` is a folder or one of the parts.
        common.LockHeld: another run is writing ``out`` or a part (and not ``wait``).
    """
    parts, out = [Path(part) for part in parts], Path(out)
    summary = MergeSummary(out, parts=parts)
    with contextlib.ExitStack() as stack:
        stack.enter_context(WriterLock(out, wait=wait))
        infos = _check_parts(parts, out)
        _lock_parts(stack, parts, wait)
        infos = _check_parts(parts, out)  # again, now that no writer can be adding to them
        first = infos[0]
        seen: set[str] = set()
        bar = tqdm(total=sum(info.rows for info in infos), unit="row", desc="merge", disable=not progress)
        with bar, atomic_path(out) as temp, h5py.File(temp, "w", libver="latest") as target:
            create(target, first.dim, dict(first.attrs, merged_from=[str(p) for p in parts]), first.labelled)
            for part in parts:
                for ids, vectors, labels in iter_labelled_chunks(part, chunk_rows):
                    keep = [row for row, key in enumerate(ids) if key not in seen and not seen.add(key)]
                    if keep:
                        append_rows(target, list(ids[keep]), vectors[keep],
                                    None if labels is None else list(labels[keep]))
                    summary.rows += len(keep)
                    summary.duplicates += len(ids) - len(keep)
                    bar.update(len(ids))
    return summary
