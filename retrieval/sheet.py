"""A contact sheet: the query beside its matches, with product ids and scores, as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageOps

from .engine import Match

THUMB = 160
CAPTION = 34


def _tile(image: Image.Image, lines: Sequence[str], border: tuple[int, int, int]) -> Image.Image:
    tile = Image.new("RGB", (THUMB + 8, THUMB + 8 + CAPTION), "white")
    thumb = ImageOps.pad(image.convert("RGB"), (THUMB, THUMB), color=(240, 240, 240))
    tile.paste(thumb, (4, 4))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, THUMB + 7, THUMB + 7], outline=border, width=3)
    for number, line in enumerate(lines):
        draw.text((6, THUMB + 10 + 13 * number), line, fill=(20, 20, 20))
    return tile


def contact_sheet(query: Image.Image, matches: Sequence[Match], path: str | Path, columns: int = 5) -> Path:
    """Write the query (left, blue border) and its matches in rank order (grid) to ``path``."""
    tiles = []
    for match in matches:
        try:
            with Image.open(match.path) as shop:
                picture = ImageOps.exif_transpose(shop).convert("RGB")
        except OSError:
            picture = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        tiles.append(_tile(picture, [f"#{match.rank} product {match.product}",
                                     f"score {match.score:.2f}  d {match.distance:.3f}"], (160, 160, 160)))
    width, height = THUMB + 8, THUMB + 8 + CAPTION
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (width * (columns + 1) + 16, height * rows), "white")
    sheet.paste(_tile(query, ["query", f"{len(matches)} matches"], (30, 90, 200)), (0, 0))
    for number, tile in enumerate(tiles):
        sheet.paste(tile, (width + 16 + (number % columns) * width, (number // columns) * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.part.png")
    sheet.save(temp)
    temp.replace(path)
    return path
