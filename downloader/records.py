"""JSON-lines record files keyed by one field, appended as work finishes and rewritten atomically.

Appending keeps what finished if the run is killed; the final rewrite (flushed to disk, then
renamed) drops duplicates, so a rerun never repeats a line. A killed run can leave one torn last
line: it is skipped with a warning. Any other line that is not a JSON object is an error naming file
and line (``read_jsonl``), or is skipped and reported (``read_jsonl(..., problems=[])``, ``RecordFile``).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from common import atomic_write

logger = logging.getLogger(__name__)


class RecordError(ValueError):
    """A line of a JSON-lines file that is not a JSON object; the message names file and line."""


def read_jsonl(path: str | Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Read a JSON-lines file of objects (a missing file reads as empty).

    A torn last line (no newline at its end: a killed writer) is skipped with a warning. Any other bad
    line raises ``RecordError`` or, when ``problems`` is a list, is skipped and appended to it as
    ``file:line: why``.
    """
    path = Path(path)
    if not path.exists():
        return []
    with path.open(encoding="utf-8", errors="replace") as handle:
        lines = handle.readlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            why = None if isinstance(record, dict) else f"not a JSON object but {type(record).__name__}"
        except json.JSONDecodeError as error:
            if number == len(lines) and not line.endswith("\n"):
                logger.warning("%s:%d: torn last line (a killed run?): skipped", path, number)
                continue
            why = f"not JSON ({error.msg})"
        except RecursionError:
            why = "not JSON (nested too deeply)"
        if why is None:
            records.append(record)
        elif problems is None:
            raise RecordError(f"{path}:{number}: {why}")
        else:
            problems.append(f"{path}:{number}: {why}")
    return records


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records atomically and durably (``common.atomic_write``)."""
    with atomic_write(path) as stream:
        for record in records:
            stream.write(json.dumps(record, sort_keys=True) + "\n")


class RecordFile:
    """Records keyed by ``key(record)``: the last one for a key wins.

    ``records`` gives the starting records (e.g. from a checked reader); else the file is read with
    ``read_jsonl`` and bad lines (including a record without its key) are skipped into ``problems``.
    """

    def __init__(self, path: str | Path, key: Callable[[dict[str, Any]], Any],
                 records: Iterable[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.problems: list[str] = []
        self._records: dict[Any, dict[str, Any]] = {}
        for record in (read_jsonl(self.path, self.problems) if records is None else records):
            try:
                self._records[self.key(record)] = record
            except KeyError as error:
                self.problems.append(f"{self.path}: a record without its {error} field: skipped")
            except (TypeError, ValueError) as error:
                self.problems.append(f"{self.path}: a record with a bad key ({error}): skipped")
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
                self._stream.write(self._separator())
            self._stream.write(json.dumps(record, sort_keys=True) + "\n")
            self._stream.flush()

    def _separator(self) -> str:
        """A newline when the file ends in a torn line, so that the first appended record stays whole."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(-1, 2)
                return "" if handle.read(1) == b"\n" else "\n"
        except OSError:
            return ""  # empty or new file

    def discard(self, key: Any) -> None:
        """Forget the record of ``key`` (applied at the next ``rewrite``)."""
        with self._lock:
            self._records.pop(key, None)

    def rewrite(self, sort_key: Callable[[dict[str, Any]], Any] | None = None) -> None:
        """Replace the file with one line per key, atomically and durably."""
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            records = list(self._records.values())
            if sort_key is not None:
                records.sort(key=sort_key)
            write_jsonl(self.path, records)
