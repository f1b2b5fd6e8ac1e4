"""Small data sets for downloader tests: every photo the shop photo of its own hat product."""

from __future__ import annotations

import json
from pathlib import Path


def shop_dataset(root: Path, urls: dict[int, str]) -> tuple[Path, Path]:
    """Write ``root/photos.txt`` (zero-padded ids) and ``root/meta`` listing each photo; return (meta, photos)."""
    photos = root / "photos.txt"
    photos.write_text("".join(f"{photo:09d},{url}\n" for photo, url in urls.items()))
    meta = root / "meta"
    meta.mkdir(exist_ok=True)
    (meta / "retrieval_hats.json").write_text(json.dumps([{"photo": photo, "product": photo} for photo in urls]))
    return meta, photos
