"""Run the jobs on a thread pool, host by host (``HostQueues``), and stop gracefully on Ctrl-C.

The first Ctrl-C starts nothing new and lets the photos in flight finish (their images are saved and
recorded); a second one abandons them (``stop`` is set: fetches give up at their next chunk).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from .fetch import Cancelled
from .hosts import HostQueues
from .plan import PhotoJob, failure
from .worker import Outcome

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class Interrupts:
    """Counts Ctrl-C presses during a run (in the main thread; elsewhere it only reads ``stop``)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.count = 0
        self.pressed = threading.Event()
        self._previous: Any = None

    @property
    def requested(self) -> bool:
        return self.count > 0 or self.stop.is_set()

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        self.pressed.set()
        if self.count == 1:
            logger.warning("interrupted: finishing the photos in flight (Ctrl-C again to abandon them)")
        else:
            logger.warning("interrupted again: abandoning the photos in flight")
            self.stop.set()
            signal.signal(signal.SIGINT, self._previous)  # a third press raises KeyboardInterrupt

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)


def run_jobs(queues: HostQueues[PhotoJob], worker: Callable[[PhotoJob], Outcome], workers: int,
             record: Callable[[PhotoJob, Outcome], None], interrupts: Interrupts, give_up_after: int = 0) -> None:
    """Run every queued job, at most ``workers`` at a time, and ``record`` each outcome in this thread.

    A job whose host asked to come back later is queued again first in line and its host paused.
    Returns when every job is done or, after Ctrl-C, when the jobs in flight are.
    """
    settle = _Settle(queues, record, give_up_after)
    running: dict[Future, tuple[str, PhotoJob]] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download")
    try:
        while True:
            while not interrupts.requested and len(running) < workers:
                item = queues.take()
                if item is None:
                    break
                running[pool.submit(worker, item[1])] = item
            wake = None if interrupts.requested else queues.next_wake()
            if not running:
                if wake is None:
                    return
                interrupts.pressed.wait(min(wake, POLL_SECONDS) + 0.001)
                continue
            timeout = POLL_SECONDS if wake is None else min(wake + 0.001, POLL_SECONDS)
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                host, job = running.pop(future)
                queues.done(host)
                try:
                    settle(host, job, future.result())
                except Cancelled:
                    continue
    except BaseException:
        interrupts.stop.set()  # an unexpected error (a full disk): abandon the rest at once
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Settle:
    """Records finished jobs, queues again those whose host asked to come back later, and gives up on a
    host that asked to be left alone longer than ``--max-wait`` or could not be reached for
    ``give_up_after`` photos in a row (0: never): its queued photos fail unrequested."""

    queues: HostQueues[PhotoJob]
    record: Callable[[PhotoJob, Outcome], None]
    give_up_after: int = 0
    unreachable: Counter = field(default_factory=Counter)  # photos in a row per host

    def __call__(self, host: str, job: PhotoJob, outcome: Outcome) -> None:
        if outcome.retry_in is not None:
            logger.info("%s asked to wait %g s (photo %d)", host, outcome.retry_in, job.photo)
            self.queues.pause(host, outcome.retry_in)
            self.queues.add(host, job, first=True)
            return
        self.record(job, outcome)
        self.unreachable[host] = self.unreachable[host] + 1 if outcome.unreachable else 0
        if outcome.host_refused is not None:
            self._give_up(host, outcome.host_refused)
        elif self.give_up_after and self.unreachable[host] == self.give_up_after:
            why = f"{host} could not be reached for {self.give_up_after} photos in a row"
            logger.warning("%s: giving up on it", why)
            self._give_up(host, f"not requested: {why}")

    def _give_up(self, host: str, reason: str) -> None:
        for other in self.queues.drain(host):
            self.record(other, Outcome(failures=[failure(other, reason)]))
