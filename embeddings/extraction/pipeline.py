"""Compute backbone vectors for the downloader's images (or a folder) into a cache, resumably.

Reader (the checked manifest or a folder) -> engine (``distributor``: local processes or Ray) ->
writer (``CacheWriter``: one writer per cache, appended batch by batch, resumable).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from common import read_manifest

from .backbones import Backbone
from .cache import CacheWriter
from .distributor import ENGINES, Engine, open_engine
from .extractor import Extractor
from .precision import check_precision
from .preprocess import DEFAULT_DECODE, check_decode
from .shards import in_shard

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class BuildConfig:
    """One build: images from ``manifest`` (ids are its paths) or from a folder ``images`` (ids are paths
    inside it; the first sub-folder is the label), into the cache ``out``.

    ``decode`` and ``precision`` are part of the cache's identity; ``engine`` is ``local`` (this machine)
    or ``ray`` (``ray_address``: None starts a local Ray with ``workers`` CPUs, ``auto`` or
    ``HOST:PORT`` joins a cluster; ``gpus_per_worker``: GPUs per network actor, None: 1 where the
    cluster has GPUs). ``strict`` makes a bad manifest line fatal; ``wait`` waits for another build
    writing ``out`` instead of failing.
    """

    out: Path
    manifest: Path | None = None
    images: Path | None = None
    backbone: str | Backbone = "vgg19"
    weights: str | Path | None = "imagenet"
    batch_size: int = 32
    shard: tuple[int, int] = (0, 1)
    workers: int | None = None
    progress: bool = False
    decode: str = DEFAULT_DECODE
    precision: str = "float32"
    engine: str = "local"
    ray_address: str | None = None
    gpus_per_worker: float | None = None
    strict: bool = False
    wait: bool = False

    def validate(self) -> None:
        if (self.manifest is None) == (self.images is None):
            raise ValueError("give exactly one of manifest or images")
        if self.manifest is not None and not Path(self.manifest).is_file():
            raise FileNotFoundError(f"{self.manifest}: manifest does not exist")
        if self.images is not None and not Path(self.images).is_dir():
            raise FileNotFoundError(f"{self.images}: image folder does not exist")
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        check_decode(self.decode)
        check_precision(self.precision)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus per worker must be 0 or more, got {self.gpus_per_worker}")

    @property
    def cpus(self) -> int:
        return self.workers or os.cpu_count() or 2


@dataclass
class BuildSummary:
    total: int = 0
    present: int = 0
    computed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def lines(self) -> list[str]:
        rate = self.computed / self.seconds if self.seconds else 0.0
        lines = [f"images: {self.total}; already cached: {self.present}; computed: {self.computed} "
                 f"({rate:.1f} images/s); unreadable: {len(self.failures)}"]
        lines += [f"  skipped {key}: {why}" for key, why in self.failures[:10]]
        if self.problems:
            lines.append(f"bad manifest lines skipped: {len(self.problems)} (--strict makes them fatal)")
            lines += [f"  {problem}" for problem in self.problems[:10]]
        if self.interrupted:
            lines.append("interrupted: the cache keeps every finished batch; run the same command to resume")
        return lines


def list_items(config: BuildConfig) -> tuple[list[tuple[str, Path, str | None]], list[str]]:
    """``(id, file, label)`` for every image of the build (before sharding), and the manifest's bad lines.

    Raises:
        common.ManifestError: with ``strict``, the first bad manifest line.
    """
    if config.manifest is not None:
        manifest = read_manifest(config.manifest, strict=config.strict)
        seen: dict[str, tuple[str, Path, str | None]] = {}
        for entry in manifest.entries:
            seen.setdefault(entry.path, (entry.path, manifest.file(entry), None))
        return list(seen.values()), manifest.problems
    root = Path(config.images)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    items = []
    for path in files:
        relative = path.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        items.append((relative.as_posix(), path, label))
    return items, []


def build(config: BuildConfig, extractor: Extractor | None = None, engine: Engine | None = None) -> BuildSummary:
    """Compute the vectors missing from ``config.out``; a rerun after any stop computes only the rest.

    ``extractor`` (local engine) or ``engine`` (any; closed at the end) replaces what the configuration describes.

    Raises:
        FileNotFoundError, ValueError: bad configuration, or no image at all to embed (nothing is written).
        common.ManifestError: ``strict`` and a bad manifest line.
        common.LockHeld: another build is writing ``out`` (and not ``wait``).
        CacheError: ``out`` exists but was built with another backbone, weights, precision or decoding.
        WeightsUnavailableError: ImageNet weights asked for and not downloadable.
    """
    config.validate()
    items, problems = list_items(config)
    if not items:  # a shard may be empty (more shards than images), a whole build may not
        if engine is not None:
            engine.close()  # a given engine is closed at the end, this end too
        if config.manifest is not None:
            raise ValueError(f"{config.manifest}: the manifest lists no image to embed"
                             + (f" ({len(problems)} bad line(s), first: {problems[0]})" if problems else ""))
        raise ValueError(f"{config.images}: no image to embed in this folder or below "
                         f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    items = [item for item in items if in_shard(item[0], config.shard)]
    labelled = config.images is not None and bool(items) and all(label is not None for _, _, label in items)
    summary = BuildSummary(total=len(items), problems=problems)
    labels = {key: label for key, _, label in items}
    engine = engine or open_engine(config, extractor)
    start = time.perf_counter()
    try:
        with CacheWriter(config.out, engine.describe(), labelled=labelled, wait=config.wait) as writer:
            todo = [(key, path) for key, path, _ in items if key not in writer.ids]
            summary.present = len(items) - len(todo)
            _run(engine, todo, writer, labels if labelled else None, summary, config.progress)
    finally:
        engine.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _run(engine: Engine, todo: list[tuple[str, Path]], writer: CacheWriter, labels: dict[str, str | None] | None,
         summary: BuildSummary, progress: bool) -> None:
    """Append every batch the engine finishes; Ctrl-C keeps what is written and stops."""
    bar = tqdm(total=len(todo), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    try:
        for batch in engine.batches(todo):
            with _interrupt_after():  # a Ctrl-C amid an append would leave the ids and vectors unequal
                summary.computed += writer.append(batch.ids, batch.vectors,
                                                  [labels[k] for k in batch.ids] if labels is not None else None)
            summary.failures += batch.failures
            for key, why in batch.failures:
                logger.warning("skipped %s: %s", key, why)
            bar.update(len(batch.ids) + len(batch.failures))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
    if not summary.interrupted:
        failed = {key for key, _ in summary.failures}
        lost = [key for key, _ in todo if key not in writer.ids and key not in failed]
        if lost:  # an engine that dropped rows: say so (a rerun computes them)
            logger.error("%d images came back from no worker (first: %s); rerun to compute them", len(lost), lost[0])
            summary.failures += [(key, "lost by the engine; rerun to compute it") for key in lost]


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold back a Ctrl-C until the block is done, then raise it (only where Python's own handler is in place)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
