"""The worker: one thread runs the network for many requests at once, then ranks them in one pass per category.

Requests decode and preprocess their photos in their own threads, then queue the network inputs here. The
worker takes what is queued, up to ``max_batch`` photos; while other requests are still decoding it waits
for them up to ``wait_ms``, so a lone request never waits and a busy service fills its batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """Two photos: their distance, a same-item score in [0, 1] and the call (None without a calibrated head)."""

    distance: float
    score: float
    same: bool | None
    threshold: float | None


@dataclass
class _Job:
    inputs: list[np.ndarray]  # one network input for a search, two for a comparison
    category: str | None = None
    k: int = 10
    future: Future = field(default_factory=Future)


class ShuttingDown(RuntimeError):
    """The service stopped before this request's batch ran."""


def compare_vectors(engine: Any, left: np.ndarray, right: np.ndarray) -> list[Comparison]:
    """Pairs of backbone vectors compared as the index compares: the head's calibrated distance, or cosine."""
    head = engine.head
    if head is not None:
        distances, scores, same = head.compare(left, right)
        threshold = float(head.calibration.threshold)
        return [Comparison(float(d), float(s), bool(x), threshold) for d, s, x in zip(distances, scores, same)]
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    cosine = np.einsum("ij,ij->i", left.astype(np.float64), right) / np.maximum(norms, 1e-12)
    distances = 1.0 - cosine
    return [Comparison(float(d), float(s), None, None) for d, s in zip(distances, engine.score(distances))]


class Batcher:
    """Queue network inputs from many requests; a worker thread embeds them together and ranks them.

    Args:
        engine: a loaded ``retrieval.SearchEngine``.
        max_batch: the most photos in one network call.
        wait_ms: how long a batch waits for requests that are still decoding.
    """

    def __init__(self, engine: Any, max_batch: int = 16, wait_ms: float = 5.0) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.wait = wait_ms / 1000
        self.batches = 0
        self.photos = 0
        self._jobs: deque[_Job] = deque()
        self._condition = threading.Condition()
        self._arriving = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="search-batcher", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued batches, then stop the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._condition:
            for job in self._jobs:
                job.future.set_exception(ShuttingDown("the service is shutting down"))
            self._jobs.clear()

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap a request's decoding: batches wait (up to ``wait_ms``) for requests inside this block."""
        with self._condition:
            self._arriving += 1
        try:
            yield
        finally:
            with self._condition:
                self._arriving -= 1
                self._condition.notify_all()

    def search(self, prepared: np.ndarray, category: str | None, k: int) -> Future:
        """A future of the ``k`` best matches (``list[Match]``) for one network input."""
        return self._submit(_Job([prepared], category, k))

    def compare(self, left: np.ndarray, right: np.ndarray) -> Future:
        """A future of the ``Comparison`` of two network inputs."""
        return self._submit(_Job([left, right]))

    def _submit(self, job: _Job) -> Future:
        with self._condition:
            if self._closed:
                raise ShuttingDown("the service is shutting down")
            self._jobs.append(job)
            self._condition.notify_all()
        return job.future

    def _take(self) -> list[_Job]:
        """The next batch: what is queued, after waiting (bounded) for requests still decoding."""
        with self._condition:
            while not self._jobs and not self._closed:
                self._condition.wait()
            deadline = time.monotonic() + self.wait
            while (self._arriving and sum(len(j.inputs) for j in self._jobs) < self.max_batch
                   and (remaining := deadline - time.monotonic()) > 0):
                self._condition.wait(remaining)
            batch, size = [], 0
            while self._jobs and (not batch or size + len(self._jobs[0].inputs) <= self.max_batch):
                size += len(self._jobs[0].inputs)
                batch.append(self._jobs.popleft())
            return batch

    def _run(self) -> None:
        while batch := self._take():
            try:
                self._process(batch)
            except Exception as error:  # noqa: BLE001 - handed to every waiting request
                logger.exception("batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)

    def _process(self, batch: list[_Job]) -> None:
        inputs = [x for job in batch for x in job.inputs]
        vectors = self.engine.extractor.predict(np.stack(inputs))
        self.batches += 1
        self.photos += len(inputs)
        searches: dict[tuple[str | None, int], list[tuple[_Job, np.ndarray]]] = defaultdict(list)
        pairs: list[tuple[_Job, np.ndarray, np.ndarray]] = []
        position = 0
        for job in batch:
            if len(job.inputs) == 1:
                searches[(job.category, job.k)].append((job, vectors[position]))
            else:
                pairs.append((job, vectors[position], vectors[position + 1]))
            position += len(job.inputs)
        for (category, k), items in searches.items():
            self._settle([job for job, _ in items], self.engine.search_vectors,
                         np.stack([v for _, v in items]), k, category)
        if pairs:
            self._settle([job for job, _, _ in pairs], compare_vectors, self.engine,
                         np.stack([a for _, a, _ in pairs]), np.stack([b for _, _, b in pairs]))

    @staticmethod
    def _settle(jobs: list[_Job], work: Callable[..., list[Any]], *args: Any) -> None:
        """Run ``work(*args)`` (one result per job) and hand each job its result, or the error to all of them."""
        try:
            results = work(*args)
        except Exception as error:  # noqa: BLE001 - the requests answer it
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)
