"""JSON-lines record files keyed by one field, appended as work finishes and rewritten atomically.

Appending keeps what finished if the run is killed; the final rewrite drops duplicates,
so a rerun never repeats a line.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

logger = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a torn last line (from a killed run) is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s line %d is not JSON (a torn write?): skipped", path, number)
    return records


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records atomically: a temporary file beside ``path``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            for record in records:
                stream.write(json.dumps(record, sort_keys=True) + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class RecordFile:
    """Records keyed by ``key(record)``: the last one for a key wins."""

    def __init__(self, path: str | Path, key: Callable[[dict[str, Any]], Any]) -> None:
        self.path = Path(path)
        self.key = key
        self._records: dict[Any, dict[str, Any]] = {self.key(r): r for r in read_jsonl(self.path)}
        self._lock = threading.Lock()
        self._stream = None

    def __contains__(self, key: Any) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records.values())

    def keep(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Forget the records for which ``predicate`` is false (applied at the next ``rewrite``)."""
        with self._lock:
            self._records = {k: r for k, r in self._records.items() if predicate(r)}

    def add(self, record: dict[str, Any]) -> None:
        """Remember ``record`` and append it to the file at once."""
        with self._lock:
            self._records[self.key(record)] = record
            if self._stream is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = self.path.open("a", encoding="utf-8")
            self._stream.write(json.dumps(record, sort_keys=True) + "\n")
            self._stream.flush()

    def discard(self, key: Any) -> None:
        """Forget the record of ``key`` (applied at the next ``rewrite``)."""
        with self._lock:
            self._records.pop(key, None)

    def rewrite(self, sort_key: Callable[[dict[str, Any]], Any] | None = None) -> None:
        """Replace the file with one line per key, atomically."""
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            records = list(self._records.values())
            if sort_key is not None:
                records.sort(key=sort_key)
            write_jsonl(self.path, records)
