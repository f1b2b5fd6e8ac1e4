"""Download Street2Shop photos concurrently, crop street photos to their boxes, and record the outcome.

Layout of ``out`` (paths in the records are relative to it):
``street/<photo>_<product>_<k>.jpg`` (k numbers the boxes of a photo and product in metadata order),
``shop/<photo>.jpg``, ``manifest.jsonl`` (one line per saved image), ``failures.jsonl`` (one line per
failure) and ``metadata_problems.jsonl`` (bad metadata entries that were skipped).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from . import images
from .fetch import Cancelled, FetchConfig, FetchError, Fetcher
from .metadata import CATEGORIES, SPLITS, ShopPhoto, StreetPair, read_metadata, read_photos
from .records import RecordFile, write_jsonl

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"
PROBLEMS = "metadata_problems.jsonl"


@dataclass
class DownloadConfig:
    """Settings of one download run; validated by ``validate``."""

    meta: Path
    photos: Path
    out: Path
    categories: tuple[str, ...] = CATEGORIES
    splits: tuple[str, ...] = SPLITS
    workers: int = 16
    fetch: FetchConfig = field(default_factory=FetchConfig)
    retry_failed: bool = False
    strict: bool = False
    shop: bool = True
    progress: bool = False

    def validate(self) -> None:
        self.meta, self.photos, self.out = Path(self.meta), Path(self.photos), Path(self.out)
        if not self.photos.is_file():
            raise FileNotFoundError(f"{self.photos}: photos file does not exist")
        if not self.meta.exists():
            raise FileNotFoundError(f"{self.meta}: metadata folder does not exist")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.fetch.timeout <= 0 or self.fetch.retries < 0:
            raise ValueError(f"timeout must be > 0 and retries >= 0, got {self.fetch.timeout}, {self.fetch.retries}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown splits {bad}; expected some of {list(SPLITS)}")
        bad = [c for c in self.categories if c not in CATEGORIES]
        if bad:
            raise ValueError(f"unknown categories {bad}; expected some of {list(CATEGORIES)}")


@dataclass
class Output:
    """One image a photo yields: where it goes, its manifest record, and the box to cut (None: whole)."""

    path: str
    record: dict[str, Any]
    bbox: Any = None


@dataclass
class PhotoJob:
    """A photo fetched once for all the images it yields."""

    photo: int
    url: str
    outputs: list[Output]


@dataclass
class DownloadSummary:
    """What a run did; ``failed`` counts failures by reason."""

    photos: int = 0
    saved: int = 0
    present: int = 0
    skipped_failed: int = 0
    failed: Counter = field(default_factory=Counter)
    metadata_problems: int = 0
    interrupted: bool = False

    def lines(self) -> list[str]:
        lines = [
            f"photos: {self.photos}; images saved: {self.saved}; photos already present: {self.present}; "
            f"skipped as failed before: {self.skipped_failed} (use --retry-failed); failures: {sum(self.failed.values())}"
        ]
        if self.failed:
            lines.append("failed by reason: " + ", ".join(f"{r}: {n}" for r, n in self.failed.most_common()))
        if self.metadata_problems:
            lines.append(f"metadata problems skipped: {self.metadata_problems} (see {PROBLEMS})")
        if self.interrupted:
            lines.append("interrupted: finished work is kept; run the same command again to resume")
        return lines


def street_path(pair: StreetPair) -> str:
    return f"street/{pair.photo}_{pair.product}_{pair.index}.jpg"


def shop_path(photo: int) -> str:
    return f"shop/{photo}.jpg"


def plan_jobs(pairs: Iterable[StreetPair], shop: Iterable[ShopPhoto], urls: dict[int, str]) -> list[PhotoJob]:
    """Group the images by photo so that each photo is fetched once."""
    outputs: dict[int, list[Output]] = defaultdict(list)
    for pair in pairs:
        record = {"path": street_path(pair), "kind": "street", "photo": pair.photo, "product": pair.product,
                  "category": pair.category, "split": pair.split, "bbox": pair.bbox.to_dict()}
        outputs[pair.photo].append(Output(record["path"], record, pair.bbox))
    for item in shop:
        record = {"path": shop_path(item.photo), "kind": "shop", "photo": item.photo, "product": item.product,
                  "category": item.category, "split": item.split, "bbox": None}
        outputs[item.photo].append(Output(record["path"], record))
    return [PhotoJob(photo, urls[photo], outs) for photo, outs in outputs.items()]


def _failure(job: PhotoJob, reason: str, output: Output | None = None) -> dict[str, Any]:
    record = {"photo": job.photo, "url": job.url, "reason": reason, "path": None}
    if output is not None:
        record.update(path=output.path, product=output.record["product"])
    return record


def _failure_key(record: dict[str, Any]) -> tuple[int, str | None]:
    return record["photo"], record.get("path")


class _Worker:
    """Fetch, validate, crop and save the images of one photo; never raises for a bad photo."""

    def __init__(self, out: Path, fetcher: Fetcher) -> None:
        self.out = out
        self.fetcher = fetcher

    def __call__(self, job: PhotoJob) -> tuple[list[Output], list[dict[str, Any]]]:
        todo = [o for o in job.outputs if not (self.out / o.path).exists()]
        try:
            image = images.decode(self.fetcher.get(job.url))
        except FetchError as error:
            return [], [_failure(job, str(error))]
        except images.ImageError as error:
            return [], [_failure(job, str(error))]
        saved, failures = [], []
        for output in todo:
            try:
                picture = images.whole(image) if output.bbox is None else images.crop(image, output.bbox)
                images.save_jpeg(picture, self.out / output.path)
                saved.append(output)
            except images.ImageError as error:
                failures.append(_failure(job, f"bad box: {error}", output))
        return saved, failures


def download(config: DownloadConfig) -> DownloadSummary:
    """Run a download; resumable: what is on disk is skipped, and earlier failures unless ``retry_failed``.

    Raises:
        FileNotFoundError, ValueError: bad configuration.
        MetadataError: unreadable metadata, or a bad entry with ``strict``.
    """
    config.validate()
    urls = read_photos(config.photos)
    meta = read_metadata(config.meta, config.categories, config.splits, set(urls), config.strict, config.shop)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / PROBLEMS, [{"file": p.file, "entry": p.entry, "photo": p.photo, "problem": p.message}
                                 for p in meta.problems])
    for problem in meta.problems[:5]:
        logger.warning("skipped bad metadata: %s", problem)

    manifest = RecordFile(out / MANIFEST, key=lambda r: r["path"])
    manifest.keep(lambda r: (out / r["path"]).exists())
    failures = RecordFile(out / FAILURES, key=_failure_key)
    failed_before: dict[int, list] = defaultdict(list)
    for item in failures.records():
        failed_before[item["photo"]].append(_failure_key(item))

    summary = DownloadSummary(metadata_problems=len(meta.problems))
    jobs = plan_jobs(meta.pairs, meta.shop, urls)
    summary.photos = len(jobs)
    todo: list[PhotoJob] = []
    for job in jobs:
        if all((out / o.path).exists() for o in job.outputs):
            summary.present += 1
            for output in job.outputs:
                if output.path not in manifest:
                    manifest.add(output.record)
        elif job.photo in failed_before and not config.retry_failed:
            summary.skipped_failed += 1
        else:
            todo.append(job)

    stop = threading.Event()
    fetcher = Fetcher(config.fetch, stop)
    worker = _Worker(out, fetcher)
    bar = tqdm(total=len(todo), unit="photo", desc="download", disable=not config.progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="download")
    pending: dict[Future, PhotoJob] = {}
    queue = iter(todo)
    def record(future: Future, job: PhotoJob) -> None:
        try:
            saved, failed = future.result()
        except Cancelled:
            return
        for key in failed_before.pop(job.photo, ()):
            failures.discard(key)
        for output in saved:
            manifest.add(output.record)
        for item in failed:
            failures.add(item)
            summary.failed[item["reason"].split(":")[0]] += 1
        summary.saved += len(saved)
        bar.update(1)
        bar.set_postfix(saved=summary.saved, failed=sum(summary.failed.values()), refresh=False)

    try:
        while True:
            while len(pending) < 4 * config.workers:
                job = next(queue, None)
                if job is None:
                    break
                pending[pool.submit(worker, job)] = job
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                record(future, pending.pop(future))
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: finishing the images in flight")
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, job in pending.items():
            if future.done() and not future.cancelled():
                record(future, job)
        fetcher.close()
        bar.close()
        manifest.rewrite(sort_key=lambda r: r["path"])
        failures.rewrite(sort_key=lambda r: (r["photo"], r.get("path") or ""))
    return summary
