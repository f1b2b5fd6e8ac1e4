"""Make a small Street2Shop-format sample: synthetic garments photographed 'in the shop' and 'in the street'.

Each product is a patterned silhouette of its category. Shop photos show it on white; street photos
paste it, rescaled and relit, into a cluttered scene, with the box recorded as Street2Shop does. The
metadata follows the real files (zero-padded ids in ``photos.txt``, float boxes, a collage with two
boxes of one item), and a few photos are broken on purpose (404, an HTML page, a truncated JPEG).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SAMPLE_CATEGORIES: tuple[str, ...] = ("bags", "dresses", "footwear", "skirts")


@dataclass(frozen=True)
class SampleConfig:
    """Size of the sample: products per category, of which ``test_products`` form the test split."""

    products: int = 8
    test_products: int = 3
    shop_per_product: int = 2
    seed: int = 0


def _silhouette(category: str, size: tuple[int, int]) -> Image.Image:
    width, height = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if category == "dresses":
        draw.polygon([(0.35 * width, 0.05 * height), (0.65 * width, 0.05 * height),
                      (0.95 * width, 0.95 * height), (0.05 * width, 0.95 * height)], fill=255)
    elif category == "skirts":
        draw.polygon([(0.25 * width, 0.2 * height), (0.75 * width, 0.2 * height),
                      (0.9 * width, 0.8 * height), (0.1 * width, 0.8 * height)], fill=255)
    elif category == "bags":
        draw.rounded_rectangle([0.1 * width, 0.35 * height, 0.9 * width, 0.9 * height], radius=width // 10, fill=255)
        draw.arc([0.3 * width, 0.1 * height, 0.7 * width, 0.6 * height], 180, 360, fill=255, width=max(3, width // 20))
    else:  # footwear
        draw.ellipse([0.05 * width, 0.45 * height, 0.95 * width, 0.85 * height], fill=255)
        draw.rectangle([0.1 * width, 0.25 * height, 0.45 * width, 0.7 * height], fill=255)
    return mask


def _pattern(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colours = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    kind = rng.integers(0, 4)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 18)
    if kind == 0:  # stripes
        weight = (np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 1:  # checks
        weight = ((x // period + y // period) % 2).astype(np.float32)
    elif kind == 2:  # dots
        weight = ((np.hypot((x % period) - period / 2, (y % period) - period / 2)) < period / 4).astype(np.float32)
    else:  # smooth two-tone gradient
        weight = (x * np.cos(angle) + y * np.sin(angle)) / (width + height)
    pixels = colours[0] * (1 - weight[..., None]) + colours[1] * weight[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def garment(category: str, rng: np.random.Generator, size: tuple[int, int] = (120, 150)) -> Image.Image:
    """One product's look: an RGBA patterned silhouette of ``category``."""
    item = _pattern(rng, size).convert("RGBA")
    item.putalpha(_silhouette(category, size))
    return item


def shop_photo(item: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The item on white, slightly moved and rescaled."""
    canvas = Image.new("RGB", (160, 200), (255, 255, 255))
    scale = rng.uniform(0.9, 1.1)
    resized = item.resize((int(item.width * scale), int(item.height * scale)))
    canvas.paste(resized, (int(rng.integers(0, 160 - resized.width + 1)),
                           int(rng.integers(0, 200 - resized.height + 1))), resized)
    return canvas


def street_photo(items: list[Image.Image], rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """A cluttered scene holding ``items``, relit; returns the photo and one box per item."""
    size = 256
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    start, end = rng.integers(40, 220, size=(2, 3))
    background = start + (end - start) * (x[..., None] + y[..., None]) / (2 * size)
    scene = Image.fromarray(background.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(scene)
    for _ in range(6):
        x0, y0 = rng.integers(0, size, size=2)
        draw.ellipse([int(x0), int(y0), int(x0 + rng.integers(20, 80)), int(y0 + rng.integers(20, 80))],
                     fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
    boxes = []
    slot = size // len(items)
    for index, item in enumerate(items):
        scale = rng.uniform(0.55, 0.85) * min(1.0, slot / item.width)
        resized = item.resize((max(8, int(item.width * scale)), max(8, int(item.height * scale))))
        light = rng.uniform(0.7, 1.2)
        rgb = Image.eval(resized.convert("RGB"), lambda v, light=light: int(min(255, v * light)))
        rgb.putalpha(resized.getchannel("A"))
        left = index * slot + int(rng.integers(0, max(1, slot - resized.width)))
        top = int(rng.integers(0, size - resized.height))
        scene.paste(rgb, (left, top), rgb)
        boxes.append({"left": left, "top": top, "width": resized.width, "height": resized.height})
    return scene.filter(ImageFilter.GaussianBlur(0.6)), boxes


def _jpeg(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="JPEG", quality=90)
    return stream.getvalue()


def make_sample(root: str | Path, config: SampleConfig = SampleConfig()) -> Path:
    """Write ``root/images/<id>.jpg`` and ``root/meta/json/*.json``; return ``root``.

    ``photos.txt`` is written by ``write_photos_txt`` once the server's address is known.
    """
    root = Path(root)
    rng = np.random.default_rng(config.seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "json").mkdir(parents=True, exist_ok=True)
    street_id, shop_id = 1, 100_001
    ids: list[int] = []
    for category in SAMPLE_CATEGORIES:
        pairs: dict[str, list] = {"train": [], "test": []}
        retrieval = []
        for number in range(config.products):
            product = 1_000 * (SAMPLE_CATEGORIES.index(category) + 1) + number
            split = "test" if number >= config.products - config.test_products else "train"
            item = garment(category, rng)
            for _ in range(config.shop_per_product):
                (root / "images" / f"{shop_id}.jpg").write_bytes(_jpeg(shop_photo(item, rng)))
                retrieval.append({"photo": shop_id, "product": product})
                ids.append(shop_id)
                shop_id += 1
            for view in range(2 if split == "train" else 1):
                collage = number == 0 and view == 0
                photo, boxes = street_photo([item, item] if collage else [item], rng)
                (root / "images" / f"{street_id}.jpg").write_bytes(_jpeg(photo))
                for box in boxes:
                    if number == 1:
                        box = {key: value + 0.5 for key, value in box.items()}  # float boxes, as in the real files
                    pairs[split].append({"photo": street_id, "product": product, "bbox": box})
                ids.append(street_id)
                street_id += 1
        for split, entries in pairs.items():
            (root / "meta" / "json" / f"{split}_pairs_{category}.json").write_text(json.dumps(entries))
        (root / "meta" / "json" / f"retrieval_{category}.json").write_text(json.dumps(retrieval))
    # Dead links, as most Street2Shop URLs are today: their photos appear in the metadata.
    broken = {900_001: None, 900_002: b"<!DOCTYPE html><html><body>This shop has closed.</body></html>",
              900_003: _jpeg(garment("bags", rng).convert("RGB"))[:600]}
    for photo, body in broken.items():
        if body is not None:
            (root / "images" / f"{photo}.jpg").write_bytes(body)
        ids.append(photo)
    with (root / "meta" / "json" / "retrieval_bags.json").open("r+") as handle:
        entries = json.load(handle) + [{"photo": photo, "product": 1_000} for photo in broken]
        handle.seek(0)
        json.dump(entries, handle)
    (root / "ids.json").write_text(json.dumps(sorted(ids)))
    return root


def write_photos_txt(root: str | Path, base_url: str) -> Path:
    """Write ``root/photos/photos.txt`` pointing every sample photo at ``base_url/images/<id>.jpg``."""
    root = Path(root)
    ids = json.loads((root / "ids.json").read_text())
    path = root / "photos" / "photos.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{photo:09d},{base_url}/images/{photo}.jpg\n" for photo in ids))
    return path
