"""Polite scheduling: a queue of photos per host, at most ``per_host`` requests in flight to one host,
and a host that answered ``Retry-After`` left alone until then while the others go on.

Hosts take turns (round robin), so that many workers spread over many hosts instead of queueing
behind the biggest one. Local sources (a folder, an archive, ``file://``) are not limited.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from typing import Callable, Generic, TypeVar

Job = TypeVar("Job")


class HostQueues(Generic[Job]):
    """Jobs queued by host; ``take`` gives the next job whose host has a free slot and is not paused.

    Args:
        per_host: most jobs in flight to one limited host.
        limited: whether a host is capped (network hosts) or not (local files).
        clock: seconds, monotonic (a parameter for tests).
    """

    def __init__(self, per_host: int, limited: Callable[[str], bool] = lambda host: True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_host < 1:
            raise ValueError(f"per_host must be at least 1, got {per_host}")
        self.per_host = per_host
        self.limited = limited
        self.clock = clock
        self.active: Counter[str] = Counter()
        self._queues: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()  # hosts with queued jobs, a free slot and no pause
        self._in_ready: set[str] = set()
        self._paused: list[tuple[float, str]] = []  # heap of (until, host)
        self._until: dict[str, float] = {}

    def add(self, host: str, job: Job, first: bool = False) -> None:
        queue = self._queues.setdefault(host, deque())
        queue.appendleft(job) if first else queue.append(job)
        self._offer(host)

    def _can_run(self, host: str) -> bool:
        free = not self.limited(host) or self.active[host] < self.per_host
        return bool(self._queues.get(host)) and free and host not in self._until

    def _offer(self, host: str) -> None:
        if host not in self._in_ready and self._can_run(host):
            self._ready.append(host)
            self._in_ready.add(host)

    def _wake(self) -> None:
        now = self.clock()
        while self._paused and self._paused[0][0] <= now:
            until, host = heapq.heappop(self._paused)
            if self._until.get(host) == until:
                del self._until[host]
                self._offer(host)

    def take(self) -> tuple[str, Job] | None:
        """The next job to run and its host (now counted in flight), or None when none may run now."""
        self._wake()
        while self._ready:
            host = self._ready.popleft()
            self._in_ready.discard(host)
            if not self._can_run(host):
                continue
            job = self._queues[host].popleft()
            self.active[host] += 1
            self._offer(host)  # back at the end of the line: hosts take turns
            return host, job
        return None

    def done(self, host: str) -> None:
        """A job of ``host`` finished: its slot is free."""
        self.active[host] -= 1
        self._offer(host)

    def drain(self, host: str) -> list[Job]:
        """Take every job still queued for ``host`` out of the queues (those in flight are not among them)."""
        return list(self._queues.pop(host, ()))

    def pause(self, host: str, seconds: float) -> None:
        """Leave ``host`` alone for ``seconds`` (its ``Retry-After``); its queued jobs wait, others go on."""
        until = max(self._until.get(host, 0.0), self.clock() + seconds)
        self._until[host] = until
        heapq.heappush(self._paused, (until, host))

    def next_wake(self) -> float | None:
        """Seconds until the next paused host with queued jobs may run again (None: no such host)."""
        waits = [until for until, host in self._paused if self._queues.get(host) and self._until.get(host) == until]
        return max(0.0, min(waits) - self.clock()) if waits else None
