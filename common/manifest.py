"""Read the downloader's ``manifest.jsonl`` without trusting it: every line is checked before any stage uses it.

A line must be a JSON object with ``path`` (relative, inside the manifest's folder), ``kind``
(``street`` or ``shop``), integer ``photo`` and ``product``, a ``category``, and for street crops a
``split``. A bad line is skipped and reported with its file and line number (``strict`` makes the
first one fatal). Only a torn last line, left by a killed writer, is skipped quietly.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

logger = logging.getLogger(__name__)

KINDS = ("street", "shop")


class ManifestError(ValueError):
    """A manifest that is missing, or (with ``strict``) has a bad line; the message names file and line."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One saved image: ``path`` is relative to the manifest's folder (POSIX separators, no ``..``)."""

    path: str
    kind: Literal["street", "shop"]
    photo: int
    product: int
    category: str
    split: str | None = None
    bbox: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "photo": self.photo, "product": self.product,
                "category": self.category, "split": self.split, "bbox": self.bbox}


@dataclass
class Manifest:
    """The good entries of a manifest, in file order, and the problems found (``file:line: why``)."""

    path: Path
    entries: list[ManifestEntry]
    problems: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """The folder the entries' paths are relative to."""
        return self.path.parent

    def file(self, entry: ManifestEntry) -> Path:
        """Where ``entry``'s image is on disk."""
        return self.root / entry.path


def _safe_path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("'path' must be a non-empty string")
    if "\\" in value or "\x00" in value:
        raise ValueError(f"'path' {value!r} has a backslash or NUL")
    if value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"'path' {value!r} is absolute; it must be relative to the manifest's folder")
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise ValueError(f"'path' {value!r} leaves the manifest's folder")
    return normal


def _int(record: dict[str, Any], key: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} must be an integer, got {value!r}")
    return value


def parse_entry(record: Any) -> ManifestEntry:
    """Check one decoded line. Raises ``ValueError`` saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    kind = record.get("kind")
    if kind not in KINDS:
        raise ValueError(f"'kind' must be 'street' or 'shop', got {kind!r}")
    category = record.get("category")
    if not isinstance(category, str) or not category:
        raise ValueError(f"'category' must be a non-empty string, got {category!r}")
    split = record.get("split")
    if kind == "street" and not isinstance(split, str):
        raise ValueError(f"a street crop needs a 'split' (train or test), got {split!r}")
    bbox = record.get("bbox")
    if bbox is not None and not isinstance(bbox, dict):
        raise ValueError(f"'bbox' must be an object or null, got {bbox!r}")
    return ManifestEntry(_safe_path(record.get("path")), kind, _int(record, "photo"), _int(record, "product"),
                         category, split if isinstance(split, str) else None, bbox)


def read_manifest(path: str | Path, strict: bool = False) -> Manifest:
    """Read and check a manifest; bad lines are skipped and logged (or fatal with ``strict``).

    Raises:
        FileNotFoundError: no such file.
        ManifestError: with ``strict``, the first bad line.
    """
    manifest = Manifest(Path(path), [])
    manifest.entries.extend(iter_manifest(path, strict, manifest.problems))
    return manifest


def iter_manifest(path: str | Path, strict: bool = False, problems: list[str] | None = None) -> Iterator[ManifestEntry]:
    """The good entries of a manifest one at a time, in file order, checked as ``read_manifest`` does (a
    catalogue's manifest has millions of lines: a caller that keeps a few columns never holds them all);
    bad lines go to ``problems`` and are logged at the end.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: with ``strict``, the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest does not exist")
    problems = [] if problems is None else problems
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            entry = _read_line(path, problems, number, line, strict)
            if entry is not None:
                yield entry
    if problems:
        logger.warning("%s: %d bad lines skipped (first: %s)", path, len(problems), problems[0])


def _read_line(path: Path, problems: list[str], number: int, line: str, strict: bool) -> ManifestEntry | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        if not line.endswith("\n"):  # only the last line can lack its newline
            logger.warning("%s line %d: torn last line (a killed run?): skipped", path, number)
        else:
            _problem(path, problems, number, "not JSON", strict)
        return None
    except RecursionError:  # json's answer to "[[[[...": not a JSONDecodeError
        _problem(path, problems, number, "not JSON (nested too deeply)", strict)
        return None
    try:
        return parse_entry(record)
    except ValueError as error:
        _problem(path, problems, number, str(error), strict)
        return None


def _problem(path: Path, problems: list[str], number: int, why: str, strict: bool) -> None:
    message = f"{path}:{number}: {why}"
    if strict:
        raise ManifestError(message)
    problems.append(message)
