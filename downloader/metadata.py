"""Read Street2Shop metadata (``photos.txt`` and ``meta/json/*.json``) into typed records.

Box convention: ``left``/``top``/``width``/``height`` in pixels of the photo as stored
(before any EXIF rotation), origin at the top-left corner; values may be floats.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

logger = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = (
    "bags", "belts", "dresses", "eyewear", "footwear", "hats",
    "leggings", "outerwear", "pants", "skirts", "tops",
)
SPLITS: tuple[str, ...] = ("train", "test")


class MetadataError(ValueError):
    """A metadata file or entry that cannot be used; the message names file and entry."""


@dataclass(frozen=True)
class BBox:
    """A box in pixels of the stored photo: ``left``, ``top`` from the top-left corner."""

    left: float
    top: float
    width: float
    height: float

    def to_dict(self) -> dict[str, float]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class StreetPair:
    """A street photo, the product it shows and where (one entry of ``*_pairs_<category>.json``)."""

    photo: int
    product: int
    bbox: BBox
    category: str
    split: str
    index: int  # k: numbers the boxes of this (photo, product) in metadata order (train then test,
    # categories in alphabetical order), from 0


@dataclass(frozen=True)
class ShopPhoto:
    """A shop photo of a product (one entry of ``retrieval_<category>.json``)."""

    photo: int
    product: int
    category: str
    split: str | None  # split of the product's pairs; None for products in no pair


@dataclass(frozen=True)
class MetadataProblem:
    """A bad entry that was skipped: where it is and what is wrong."""

    file: str
    entry: int | None
    photo: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.entry is None else f"{self.file} entry {self.entry}"
        return f"{where}: {self.message}"


@dataclass
class Metadata:
    """Everything read from a metadata folder for the chosen categories and splits."""

    pairs: list[StreetPair] = field(default_factory=list)
    shop: list[ShopPhoto] = field(default_factory=list)
    problems: list[MetadataProblem] = field(default_factory=list)


def read_photos(path: str | Path) -> dict[int, str]:
    """Parse ``photos.txt`` (``<zero-padded id>,<url>`` a line) into ``{id: url}``.

    Raises:
        FileNotFoundError: the file does not exist.
        MetadataError: a line is not ``<id>,<url>``.
    """
    path = Path(path)
    urls: dict[int, str] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        photo, sep, url = line.partition(",")
        if not sep or not (photo.strip().isascii() and photo.strip().isdigit()) or not url.strip():
            raise MetadataError(f"{path} line {number}: expected '<id>,<url>', got {line[:80]!r}")
        urls[int(photo)] = url.strip()
    return urls


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MetadataError(f"{path}: not UTF-8 text (byte {error.start}): is it the right file?") from None


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError  # JSON as Python reads it also has Infinity and NaN
    return float(value) if not float(value).is_integer() else int(value)


def _parse_bbox(raw: object) -> BBox:
    if not isinstance(raw, dict):
        raise MetadataError("bbox is not an object")
    try:
        box = BBox(*(_number(raw[key]) for key in ("left", "top", "width", "height")))
    except KeyError as missing:
        raise MetadataError(f"bbox has no {missing.args[0]!r}") from None
    except TypeError:
        raise MetadataError(f"bbox values must be finite numbers, got {raw}") from None
    if box.width <= 0 or box.height <= 0:
        raise MetadataError(f"zero-size or negative box (width {box.width}, height {box.height})")
    if box.left < 0 or box.top < 0:
        raise MetadataError(f"negative box corner (left {box.left}, top {box.top})")
    return box


def _load_list(path: Path) -> list:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise MetadataError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise MetadataError(f"{path}: not JSON (nested too deeply)") from None
    if not isinstance(data, list):
        raise MetadataError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _entry_ids(entry: object) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise MetadataError("entry is not an object")
    for key in ("photo", "product"):
        if key not in entry:
            raise MetadataError(f"missing field {key!r}")
        if isinstance(entry[key], bool) or not isinstance(entry[key], int):
            raise MetadataError(f"{key!r} must be an integer, got {entry[key]!r}")
    return entry["photo"], entry["product"]


def _category_files(meta_dir: Path, pattern: str, categories: Iterable[str]) -> list[tuple[str, Path]]:
    found = []
    for category in categories:
        path = meta_dir / pattern.format(category=category)
        if path.exists():
            found.append((category, path))
    return found


def resolve_meta_dir(meta: str | Path) -> Path:
    """Accept the dataset root, ``meta/`` or ``meta/json/`` and return the folder holding the JSON files."""
    meta = Path(meta)
    for candidate in (meta, meta / "json", meta / "meta" / "json"):
        if candidate.is_dir() and (any(candidate.glob("*_pairs_*.json")) or any(candidate.glob("retrieval_*.json"))):
            return candidate
    if not meta.exists():
        raise FileNotFoundError(f"{meta}: metadata folder does not exist")
    raise MetadataError(f"{meta}: no Street2Shop metadata (*_pairs_<category>.json, retrieval_<category>.json) found")


def read_metadata(
    meta: str | Path,
    categories: Iterable[str] = CATEGORIES,
    splits: Iterable[str] = SPLITS,
    photo_ids: set[int] | None = None,
    strict: bool = False,
    include_shop: bool = True,
) -> Metadata:
    """Read the pair and retrieval files of ``categories`` and ``splits``.

    Args:
        meta: the metadata folder (dataset root, ``meta/`` or ``meta/json/``).
        photo_ids: ids listed in ``photos.txt``; an entry whose photo is not there is a problem.
        strict: raise on the first bad entry instead of recording it in ``problems``.

    Raises:
        MetadataError: a file is not a JSON list, or (with ``strict``) an entry is bad.
    """
    meta_dir = resolve_meta_dir(meta)
    categories, splits = list(categories), list(splits)
    unknown = [c for c in categories if not re.fullmatch(r"[a-z_]+", c)]
    if unknown:
        raise ValueError(f"bad category names: {unknown}")
    result = Metadata()
    problem = _problem_log(result.problems, strict)
    product_split = _read_pairs(meta_dir, categories, splits, photo_ids, problem, result.pairs)
    if include_shop:
        _read_shop(meta_dir, categories, len(splits) < len(SPLITS), photo_ids, problem, product_split, result.shop)
    logger.info("read %d pairs, %d shop photos, %d problems from %s",
                len(result.pairs), len(result.shop), len(result.problems), meta_dir)
    return result


_Problem = Callable[[Path, int | None, int | None, str], None]  # (file, entry, photo, message)


def _problem_log(problems: list[MetadataProblem], strict: bool) -> _Problem:
    """Record a bad entry in ``problems``, or raise ``MetadataError`` at once with ``strict``."""

    def problem(file: Path, index: int | None, photo: int | None, message: str) -> None:
        if strict:
            raise MetadataError(f"{file}: entry {index}: {message}")
        problems.append(MetadataProblem(file.name, index, photo, message))

    return problem


def _read_pairs(meta_dir: Path, categories: list[str], splits: list[str], photo_ids: set[int] | None,
                problem: _Problem, pairs: list[StreetPair]) -> dict[tuple[str, int], str]:
    """Append the selected street pairs to ``pairs``; return the split of each (category, product) seen.

    Boxes are numbered per (photo, product) over every pair file in a fixed order, whatever is selected,
    so that a file name always means the same crop (one product is listed under two categories)."""
    product_split: dict[tuple[str, int], str] = {}
    boxes_seen: dict[tuple[int, int], int] = {}
    every = list(dict.fromkeys([*CATEGORIES, *categories]))
    for split in SPLITS:
        for category, path in _category_files(meta_dir, f"{split}_pairs_{{category}}.json", every):
            selected = split in splits and category in categories
            for index, entry in enumerate(_load_list(path)):
                try:
                    photo, product = _entry_ids(entry)
                    if "bbox" not in entry:
                        raise MetadataError("missing field 'bbox'")
                    bbox = _parse_bbox(entry["bbox"])
                except MetadataError as error:
                    if selected:
                        problem(path, index, entry.get("photo") if isinstance(entry, dict) else None, str(error))
                    continue
                k = boxes_seen.get((photo, product), 0)
                boxes_seen[(photo, product)] = k + 1
                if not selected:
                    continue
                if photo_ids is not None and photo not in photo_ids:
                    problem(path, index, photo, f"photo {photo} is not in photos.txt")
                    continue
                pairs.append(StreetPair(photo, product, bbox, category, split, k))
                product_split[(category, product)] = split
    return product_split


def _read_shop(meta_dir: Path, categories: list[str], some_splits: bool, photo_ids: set[int] | None,
               problem: _Problem, product_split: dict[tuple[str, int], str], shop: list[ShopPhoto]) -> None:
    """Append the shop photos of ``categories`` to ``shop`` (with ``some_splits``, only those of the
    products of the selected splits)."""
    for category, path in _category_files(meta_dir, "retrieval_{category}.json", categories):
        for index, entry in enumerate(_load_list(path)):
            try:
                photo, product = _entry_ids(entry)
            except MetadataError as error:
                problem(path, index, None, str(error))
                continue
            if photo_ids is not None and photo not in photo_ids:
                problem(path, index, photo, f"photo {photo} is not in photos.txt")
                continue
            split = product_split.get((category, product))
            if split is None and some_splits:
                continue  # a product of a split that was not asked for
            shop.append(ShopPhoto(photo, product, category, split))
