"""Compute backbone vectors for the downloader's images (or a folder) into a cache, resumably."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from downloader.records import read_jsonl

from .cache import CacheWriter
from .extractor import Extractor
from .shards import in_shard

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class BuildConfig:
    """One build: images from ``manifest`` (ids are its paths) or from a folder ``images`` (ids are paths
    inside it; the first sub-folder is the label), into the cache ``out``."""

    out: Path
    manifest: Path | None = None
    images: Path | None = None
    backbone: str = "vgg19"
    weights: str | Path | None = "imagenet"
    batch_size: int = 32
    shard: tuple[int, int] = (0, 1)
    workers: int | None = None
    progress: bool = False

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


@dataclass
class BuildSummary:
    total: int = 0
    present: int = 0
    computed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def lines(self) -> list[str]:
        rate = self.computed / self.seconds if self.seconds else 0.0
        lines = [f"images: {self.total}; already cached: {self.present}; computed: {self.computed} "
                 f"({rate:.1f} images/s); unreadable: {len(self.failures)}"]
        lines += [f"  skipped {key}: {why}" for key, why in self.failures[:10]]
        if self.interrupted:
            lines.append("interrupted: the cache keeps every finished batch; run the same command to resume")
        return lines


def list_items(config: BuildConfig) -> list[tuple[str, Path, str | None]]:
    """``(id, file, label)`` for every image of the build (before sharding)."""
    if config.manifest is not None:
        manifest = Path(config.manifest)
        seen: dict[str, tuple[str, Path, str | None]] = {}
        for record in read_jsonl(manifest):
            seen.setdefault(record["path"], (record["path"], manifest.parent / record["path"], None))
        return list(seen.values())
    root = Path(config.images)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    items = []
    for path in files:
        relative = path.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        items.append((relative.as_posix(), path, label))
    return items


def build(config: BuildConfig, extractor: Extractor | None = None) -> BuildSummary:
    """Compute the vectors missing from ``config.out``; a rerun after any stop computes only the rest.

    Raises:
        FileNotFoundError, ValueError: bad configuration.
        CacheError: ``out`` exists but was built with another backbone or weights.
        WeightsUnavailableError: ImageNet weights asked for and not downloadable.
    """
    config.validate()
    items = [item for item in list_items(config) if in_shard(item[0], config.shard)]
    labelled = config.images is not None and bool(items) and all(label is not None for _, _, label in items)
    extractor = extractor or Extractor(config.backbone, config.weights, config.batch_size, config.workers)
    summary = BuildSummary(total=len(items))
    labels = {key: label for key, _, label in items}
    start = time.perf_counter()
    with CacheWriter(config.out, extractor.describe(), labelled=labelled) as writer:
        todo = [(key, path) for key, path, _ in items if key not in writer.ids]
        summary.present = len(items) - len(todo)
        bar = tqdm(total=len(todo), unit="img", desc="extract", disable=not config.progress, dynamic_ncols=True)
        try:
            for batch in extractor.batches(todo):
                summary.computed += writer.append(batch.ids, batch.vectors,
                                                  [labels[k] for k in batch.ids] if labelled else None)
                summary.failures += batch.failures
                for key, why in batch.failures:
                    logger.warning("skipped %s: %s", key, why)
                bar.update(len(batch.ids) + len(batch.failures))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
