"""One writer per output: a lock file beside the output that names its holder.

``WriterLock("vectors.h5")`` holds ``vectors.h5.lock`` with an exclusive ``flock`` for as long as
the writer runs. The kernel drops the lock when the holding process dies, so a lock left by a
killed run is stale and is taken over (and said so in the log); a live holder makes a second
writer wait (``wait=True``) or fail at once with ``LockHeld`` naming the holder. Locks are
advisory and local to one machine's file system.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .atomic import remove_stale_temps

logger = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another live process is writing the same output."""


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".lock")


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since} ({holder.get('command', '?')})"


class WriterLock:
    """Context manager holding the one-writer lock of ``output``.

    Args:
        output: the file or folder to be written.
        wait: block until the current holder finishes instead of failing.
        timeout: with ``wait``, give up after this many seconds (None: no limit).

    Raises (on enter):
        LockHeld: another live process holds the lock (and not ``wait``, or the timeout passed).
    """

    def __init__(self, output: str | Path, wait: bool = False, timeout: float | None = None) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self.wait = wait
        self.timeout = timeout
        self._handle: int | None = None

    def holder(self) -> dict[str, Any]:
        """What the lock file says of its holder (empty when unreadable)."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError, RecursionError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        announced = False
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    raise LockHeld(f"{self.output}: another run is writing it: {_describe(self.holder())}; "
                                   f"wait for it to finish (or pass --wait)") from None
                if not announced:
                    logger.warning("%s: waiting for %s", self.output, _describe(self.holder()))
                    announced = True
                time.sleep(0.2)
                continue
            try:  # the previous holder may have removed the file between our open and flock
                same = os.fstat(handle).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(handle)
                continue
            break
        stale = self.holder()
        if stale:
            logger.warning("%s: taking over a lock left by a run that ended without releasing it (%s)",
                           self.output, _describe(stale))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join(sys.argv)[:300]}
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps(record).encode())
        os.fsync(handle)
        self._handle = handle
        try:
            remove_stale_temps(self.output)  # ours now: whatever a killed writer left half-written goes
        except BaseException:
            self.__exit__()  # never left held by a run that did not start
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None
