"""What a run has to make: one job per photo, listing every image that photo yields.

Layout of the output folder (paths relative to it): ``street/<photo>_<product>_<k>.jpg`` (k numbers
the boxes of a photo and product in metadata order) and ``shop/<photo>.jpg``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from .metadata import BBox, ShopPhoto, StreetPair
from .sources import Location


@dataclass
class Output:
    """One image a photo yields: where it goes, its manifest record, and the box to cut (None: whole)."""

    path: str
    record: dict[str, Any]
    bbox: BBox | None = None


@dataclass
class PhotoJob:
    """A photo fetched once for all the images it yields; ``todo`` are those not yet on disk."""

    photo: int
    outputs: list[Output]
    todo: list[Output] = field(default_factory=list)
    location: Location | None = None
    waits: int = 0  # times the host said "come back later" (Retry-After)


def street_path(pair: StreetPair) -> str:
    return f"street/{pair.photo}_{pair.product}_{pair.index}.jpg"


def shop_path(photo: int) -> str:
    return f"shop/{photo}.jpg"


def plan_jobs(pairs: Iterable[StreetPair], shop: Iterable[ShopPhoto]) -> list[PhotoJob]:
    """Group the images by photo so that each photo is fetched once."""
    outputs: dict[int, list[Output]] = defaultdict(list)
    for pair in pairs:
        record = {"path": street_path(pair), "kind": "street", "photo": pair.photo, "product": pair.product,
                  "category": pair.category, "split": pair.split, "bbox": pair.bbox.to_dict()}
        outputs[pair.photo].append(Output(record["path"], record, pair.bbox))
    for item in shop:
        record = {"path": shop_path(item.photo), "kind": "shop", "photo": item.photo, "product": item.product,
                  "category": item.category, "split": item.split, "bbox": None}
        outputs[item.photo].append(Output(record["path"], record))
    return [PhotoJob(photo, outs) for photo, outs in outputs.items()]


def failure(job: PhotoJob, reason: str, output: Output | None = None, host: str | None = None) -> dict[str, Any]:
    """A ``failures.jsonl`` record: the photo, where it was looked for (``url``, ``host``), why, and the one
    image if only it failed."""
    location = job.location
    record = {"photo": job.photo, "url": location.address if location else None,
              "host": location.host if location else host, "reason": reason, "path": None}
    if output is not None:
        record.update(path=output.path, product=output.record["product"])
    return record
