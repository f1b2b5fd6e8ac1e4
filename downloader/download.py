"""Download Street2Shop photos concurrently, crop street photos to their boxes, and record the outcome.

Layout of ``out`` (paths in the records are relative to it): the images (see ``plan``),
``manifest.jsonl`` (one line per saved image), ``failures.jsonl`` (one line per failure) and
``metadata_problems.jsonl`` (bad metadata entries that were skipped). One run writes ``out`` at a
time (``common.WriterLock``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from common import WriterLock, read_manifest

from . import images
from .archives import ArchiveSource
from .fetch import FetchConfig, Fetcher
from .hosts import HostQueues
from .metadata import CATEGORIES, SPLITS, read_metadata, read_photos
from .plan import PhotoJob, failure, plan_jobs
from .records import RecordFile, write_jsonl
from .scheduler import Interrupts, run_jobs
from .sources import ChainSource, FolderSource, Source, UrlSource
from .worker import Outcome, Worker

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"
PROBLEMS = "metadata_problems.jsonl"


def _check_exists(path: Path, what: str, folder: bool) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} does not exist")
    if folder and not path.is_dir():
        raise NotADirectoryError(f"{path}: the {what} is a file, not a folder")
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{path}: the {what} is a folder, not a file")


def _is_url(text: str) -> bool:
    try:
        return urlsplit(text).scheme in ("http", "https", "file")
    except ValueError:  # "http://[::1"
        return False


@dataclass
class DownloadConfig:
    """Settings of one download run; validated by ``validate``.

    Photos come from ``photos`` (``photos.txt`` URLs, optionally moved to ``mirror``), ``photos_dir``
    or ``photos_archive``; with a local source and ``photos`` too, photos missing locally are fetched
    from their URL.
    """

    meta: Path
    photos: Path | None = None
    out: Path | None = None
    photos_dir: Path | None = None
    photos_archive: Path | None = None
    mirror: str | None = None
    categories: tuple[str, ...] = CATEGORIES
    splits: tuple[str, ...] = SPLITS
    workers: int = 16
    per_host: int = 4
    max_wait: float = 300.0
    give_up_after: int = 10
    fetch: FetchConfig = field(default_factory=FetchConfig)
    retry_failed: bool = False
    strict: bool = False
    shop: bool = True
    progress: bool = False
    wait: bool = False

    def validate(self) -> None:
        if self.out is None:
            raise ValueError("an output folder is needed (--out)")
        self.meta, self.out = Path(self.meta), Path(self.out)
        if self.photos is None and self.photos_dir is None and self.photos_archive is None:
            raise ValueError("say where the photos are: --photos, --photos-dir or --photos-archive")
        if self.photos_dir is not None and self.photos_archive is not None:
            raise ValueError("--photos-dir and --photos-archive exclude each other: pick one")
        for path, what, folder in ((self.photos, "photos file", False), (self.photos_dir, "photos folder", True),
                                   (self.photos_archive, "photos archive", False)):
            if path is not None:
                _check_exists(Path(path), what, folder)
        if self.mirror is not None and not _is_url(self.mirror):
            raise ValueError(f"--mirror must be an http://, https:// or file:// URL, got {self.mirror!r}")
        if self.mirror is not None and self.photos is None:
            raise ValueError("--mirror rewrites the URLs of --photos: give --photos too")
        if not self.meta.exists():
            raise FileNotFoundError(f"{self.meta}: metadata folder does not exist")
        for name in ("workers", "per_host"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.give_up_after < 0:
            raise ValueError(f"give_up_after must be >= 0 (0: never), got {self.give_up_after}")
        if not (math.isfinite(self.max_wait) and self.max_wait >= 0):
            raise ValueError(f"max_wait must be a finite number >= 0, got {self.max_wait}")
        self.fetch.validate()
        for name, given, known in (("splits", self.splits, SPLITS), ("categories", self.categories, CATEGORIES)):
            if not given:  # else a run that does nothing and says it succeeded
                raise ValueError(f"no {name} given; expected some of {list(known)}")
            bad = [value for value in given if value not in known]
            if bad:
                raise ValueError(f"unknown {name} {bad}; expected some of {list(known)}")


@dataclass
class DownloadSummary:
    """What a run did; ``failed`` counts failures by reason, ``failed_hosts`` by host."""

    photos: int = 0
    saved: int = 0
    present: int = 0
    skipped_failed: int = 0
    failed: Counter = field(default_factory=Counter)
    failed_hosts: Counter = field(default_factory=Counter)
    metadata_problems: int = 0
    record_problems: list[str] = field(default_factory=list)
    interrupted: bool = False

    def lines(self) -> list[str]:
        lines = [
            f"photos: {self.photos}; images saved: {self.saved}; photos already present: {self.present}; "
            f"skipped as failed before: {self.skipped_failed} (use --retry-failed); failures: {sum(self.failed.values())}"
        ]
        if self.failed:
            lines.append("failed by reason: " + ", ".join(f"{r}: {n}" for r, n in self.failed.most_common()))
            lines.append("failed by host: " + ", ".join(f"{h}: {n}" for h, n in self.failed_hosts.most_common(10)))
        if self.metadata_problems:
            lines.append(f"metadata problems skipped: {self.metadata_problems} (see {PROBLEMS})")
        if self.record_problems:
            lines.append(f"bad lines skipped in the records: {len(self.record_problems)} "
                         f"(first: {self.record_problems[0]})")
        if self.interrupted:
            lines.append("interrupted: finished work is kept; run the same command again to resume")
        return lines


def _failure_key(record: dict[str, Any]) -> tuple[int, str | None]:
    """A failure's photo and, when only one of its images failed, that image's path (types checked: the
    records are sorted by them)."""
    photo, path = record["photo"], record.get("path")
    if isinstance(photo, bool) or not isinstance(photo, int):
        raise ValueError(f"photo {photo!r} is not an integer id")
    if path is not None and not isinstance(path, str):
        raise ValueError(f"path {path!r} is neither text nor null")
    return photo, path


def download(config: DownloadConfig) -> DownloadSummary:
    """Run a download; resumable: what is on disk is skipped, and earlier failures unless ``retry_failed``.

    Raises:
        FileNotFoundError, ValueError: bad configuration (``ArchiveError`` for a bad archive).
        MetadataError: unreadable metadata, or a bad entry with ``strict``.
        common.LockHeld: another run is writing ``out`` (and not ``wait``).
    """
    config.validate()
    with WriterLock(config.out.resolve(), wait=config.wait):
        return _download(config)


def _open_records(out: Path, summary: DownloadSummary) -> tuple[RecordFile, RecordFile]:
    """The manifest (checked by ``common.read_manifest``, only whole images kept) and the failures."""
    entries = []
    if (out / MANIFEST).exists():
        checked = read_manifest(out / MANIFEST)
        summary.record_problems += checked.problems
        entries = [entry.to_dict() for entry in checked.entries]
    manifest = RecordFile(out / MANIFEST, key=lambda r: r["path"], records=entries)
    manifest.keep(lambda r: images.is_complete_jpeg(out / r["path"]))
    failures = RecordFile(out / FAILURES, key=_failure_key)
    summary.record_problems += failures.problems
    for problem in summary.record_problems[:5]:
        logger.warning("bad record line skipped: %s", problem)
    return manifest, failures


def _select(jobs: list[PhotoJob], out: Path, manifest: RecordFile, failed_before: dict[int, list],
            retry_failed: bool, summary: DownloadSummary) -> list[PhotoJob]:
    """The jobs with an image still to make. Every whole image on disk gets its manifest line back (a power
    loss can lose appended lines), also when its photo still has other images to make."""
    todo = []
    for job in jobs:
        job.todo = []
        for output in job.outputs:
            if output.path in manifest or images.is_complete_jpeg(out / output.path):
                if output.path not in manifest:
                    manifest.add(output.record)
            else:
                job.todo.append(output)
        if not job.todo:
            summary.present += 1
        elif job.photo in failed_before and not retry_failed:
            summary.skipped_failed += 1
        else:
            todo.append(job)
    return todo


def _open_source(config: DownloadConfig, urls: dict[int, str], fetcher: Fetcher) -> Source:
    """The local mirror (folder or archive) if any, then the URLs of ``photos.txt`` if given."""
    sources: list[Source] = []
    if config.photos_dir is not None:
        sources.append(FolderSource(config.photos_dir, config.fetch.max_bytes))
    if config.photos_archive is not None:
        sources.append(ArchiveSource(config.photos_archive, config.fetch.max_bytes))
    if config.photos is not None:
        sources.append(UrlSource(urls, fetcher, config.mirror))
    return sources[0] if len(sources) == 1 else ChainSource(sources)


@dataclass
class _Recorder:
    """Puts each photo's outcome into the records and the summary (called in the scheduling thread only)."""

    manifest: RecordFile
    failures: RecordFile
    failed_before: dict[int, list]
    summary: DownloadSummary
    bar: tqdm

    def __call__(self, job: PhotoJob, outcome: Outcome) -> None:
        for key in self.failed_before.pop(job.photo, ()):
            self.failures.discard(key)
        for output in outcome.saved:
            self.manifest.add(output.record)
        for item in outcome.failures:
            self.failures.add(item)
            self.summary.failed[item["reason"].split(":")[0]] += 1
            self.summary.failed_hosts[item["host"] or "-"] += 1
        self.summary.saved += len(outcome.saved)
        self.bar.update(1)
        self.bar.set_postfix(saved=self.summary.saved, failed=sum(self.summary.failed.values()), refresh=False)


def _queue(todo: list[PhotoJob], source: Source, per_host: int, record: _Recorder) -> HostQueues[PhotoJob]:
    """Find each photo in the source (one found nowhere is a failure) and queue it under its host."""
    network: set[str] = set()
    queues: HostQueues[PhotoJob] = HostQueues(per_host, limited=network.__contains__)
    for job in todo:
        job.location = source.locate(job.photo)
        if job.location is None:
            record(job, Outcome(failures=[failure(job, source.missing, host=source.name)]))
    located = sorted((job for job in todo if job.location), key=lambda job: job.location.order)
    for job in located:
        if job.location.limited:
            network.add(job.location.host)
        queues.add(job.location.host, job)
    source.expect([job.location for job in located])
    return queues


def _download(config: DownloadConfig) -> DownloadSummary:
    urls = read_photos(config.photos) if config.photos is not None else {}
    local = config.photos_dir is not None or config.photos_archive is not None
    meta = read_metadata(config.meta, config.categories, config.splits, None if local else set(urls),
                         config.strict, config.shop)
    interrupts = Interrupts(threading.Event())
    source = _open_source(config, urls, Fetcher(config.fetch, interrupts.stop))
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / PROBLEMS, [{"file": p.file, "entry": p.entry, "photo": p.photo, "problem": p.message}
                                 for p in meta.problems])
    for problem in meta.problems[:5]:
        logger.warning("skipped bad metadata: %s", problem)
    summary = DownloadSummary(metadata_problems=len(meta.problems))
    manifest, failures = _open_records(out, summary)
    failed_before: dict[int, list] = defaultdict(list)
    for item in failures.records():
        failed_before[item["photo"]].append(_failure_key(item))
    jobs = plan_jobs(meta.pairs, meta.shop)
    summary.photos = len(jobs)
    bar = tqdm(total=0, unit="photo", desc="download", disable=not config.progress, dynamic_ncols=True)
    record = _Recorder(manifest, failures, failed_before, summary, bar)
    try:
        todo = _select(jobs, out, manifest, failed_before, config.retry_failed, summary)
        bar.reset(total=len(todo))
        queues = _queue(todo, source, config.per_host, record)
        with interrupts:
            run_jobs(queues, Worker(out, config.fetch.retries, config.max_wait), config.workers, record, interrupts,
                     config.give_up_after)
        summary.interrupted = interrupts.requested
    finally:
        source.close()
        bar.close()
        manifest.rewrite(sort_key=lambda r: r["path"])
        failures.rewrite(sort_key=lambda r: (r["photo"], r.get("path") or ""))
    return summary
