"""Reader: decode image files into ``uint8`` batches in worker processes, a few batches ahead of the network.

Processes, not threads: JPEG decoding and resizing hold Python's lock long enough that threads
starve a GPU. Workers start from a fork server (never forked from a process that runs TensorFlow),
ignore Ctrl-C (the driver decides what stops), and send back one stacked array per chunk of images.
A worker that dies (killed, out of memory) is replaced and its chunk retried; a chunk that kills a
worker twice is reported as unreadable, so no image is lost without a reason.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from downloader.images import ImageError

from .preprocess import load_pixels

logger = logging.getLogger(__name__)

RETRIES = 1  # times a chunk whose worker died is sent again


@dataclass
class Decoded:
    """The readable images of one batch as ``uint8`` pixels (N x H x W x 3), and why the others were skipped."""

    ids: list[str]
    pixels: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def decode_chunk(items: list[tuple[str, str]], size: tuple[int, int], decode: str) -> Decoded:
    """Decode ``(id, path)`` pairs; an unreadable file becomes a failure with its reason (runs in a worker)."""
    ids, pixels, failures = [], [], []
    for key, path in items:
        try:
            pixels.append(load_pixels(path, size, decode))
            ids.append(key)
        except (ImageError, OSError) as error:
            failures.append((key, str(error)))
        except Exception as error:  # noqa: BLE001 (an untrusted file must never stop the build)
            failures.append((key, f"{path}: unreadable image: {type(error).__name__}: {error}"[:300]))
    stacked = np.stack(pixels) if pixels else np.zeros((0, *size, 3), np.uint8)
    return Decoded(ids, stacked, failures)


def join(parts: list[Decoded], size: tuple[int, int]) -> Decoded:
    """One batch from its chunks, in order."""
    ids = [key for part in parts for key in part.ids]
    arrays = [part.pixels for part in parts if len(part.ids)]
    pixels = np.concatenate(arrays) if arrays else np.zeros((0, *size, 3), np.uint8)
    return Decoded(ids, pixels, [f for part in parts for f in part.failures])


def _start_worker(driver: int) -> None:
    """Worker start-up: ignore Ctrl-C, and exit when the driver process ends (even by SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(driver,), name="driver-watch", daemon=True).start()


def _exit_with(driver: int) -> None:
    """Wait for ``driver`` to end, then end this process: a killed driver leaves no orphan workers behind
    (they hold their task queue open themselves, so they would wait on it for ever)."""
    try:
        handle = os.pidfd_open(driver)
    except (AttributeError, OSError):  # no pidfd (not Linux, or the driver is already gone): poll
        handle = None
    if handle is not None:
        select.select([handle], [], [])
    else:
        while _alive(driver):
            time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        context.set_forkserver_preload([__name__])
    return context


class DecodePool:
    """Worker processes decoding batches ahead of their consumer: ``for decoded in pool.batches(items): ...``.

    Args:
        size: (height, width) of the network input.
        decode: ``exact`` or ``fast`` (see ``preprocess``).
        workers: processes (at least 1).
        batch_size: images per batch; each batch is cut into chunks, one per worker.
        prefetch: batches decoded ahead of the one being consumed.
    """

    def __init__(self, size: tuple[int, int], decode: str, workers: int, batch_size: int, prefetch: int = 2) -> None:
        self.size = tuple(size)
        self.decode = decode
        self.workers = max(1, workers)
        self.batch_size = batch_size
        self.prefetch = max(1, prefetch)
        self.chunk = max(1, -(-batch_size // self.workers))
        self._pool: ProcessPoolExecutor | None = None
        self._generation = 0  # counts pools started, so that one death restarts the pool once
        self._decoded_any = False

    def _submit(self, chunk: list[tuple[str, str]]) -> Future:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=_start_worker,
                                             initargs=(os.getpid(),))
            self._generation += 1
        try:
            future = self._pool.submit(decode_chunk, chunk, self.size, self.decode)
        except BrokenProcessPool:  # a worker died since the last submit: its result will say so
            future = Future()
            future.set_exception(BrokenProcessPool("a decoding process died"))
        future.generation = self._generation  # type: ignore[attr-defined]
        return future

    def _result(self, chunk: list[tuple[str, str]], future: Future) -> Decoded:
        """The chunk's result; if its worker died, restart the pool and retry (then give up on the chunk)."""
        for attempt in range(RETRIES + 1):
            try:
                result = future.result()
                self._decoded_any = True
                return result
            except BrokenProcessPool:
                if not self._decoded_any:
                    self.close()
                    raise RuntimeError(
                        "the decoding processes died before decoding anything; a script that builds vectors "
                        "needs the `if __name__ == \"__main__\":` guard (they import the main module)") from None
                if future.generation == self._generation:  # type: ignore[attr-defined]
                    logger.warning("a decoding process died; restarting the decoding processes")
                    self.close()
                if attempt < RETRIES:
                    future = self._submit(chunk)
        return Decoded([], np.zeros((0, *self.size, 3), np.uint8),
                       [(key, f"{path}: the decoding process died on this chunk twice") for key, path in chunk])

    def batches(self, items: Iterable[tuple[str, str | Path]]) -> Iterator[Decoded]:
        """Decoded batches of ``(id, path)`` pairs, in order."""
        items = ((key, str(path)) for key, path in items)
        pending: deque[list[tuple[list[tuple[str, str]], Future]]] = deque()

        def submit() -> None:
            batch = list(islice(items, self.batch_size))
            if batch:
                chunks = [batch[i:i + self.chunk] for i in range(0, len(batch), self.chunk)]
                pending.append([(chunk, self._submit(chunk)) for chunk in chunks])

        try:
            for _ in range(self.prefetch + 1):
                submit()
            while pending:
                parts = [self._result(chunk, future) for chunk, future in pending.popleft()]
                submit()
                yield join(parts, self.size)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers; chunks not yet started are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
