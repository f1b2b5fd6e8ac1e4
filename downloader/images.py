"""Decode, validate, normalise and crop images with Pillow.

Shared by the downloader (bytes from the network) and the embeddings and retrieval stages
(files on disk), so that every stage sees the same RGB pixels for the same photo.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from common import atomic_path

from .metadata import BBox


class ImageError(ValueError):
    """Bytes or a file that are not a usable image; the message says why."""


# The one image-size policy of every stage (downloader, build, query): Pillow's own warning threshold,
# enforced as an error. An RGB image at the limit takes about 270 MB once decoded.
MAX_PIXELS = 89_478_485


def _too_large(pixels: str, max_pixels: int) -> ImageError:
    return ImageError(f"image too large: {pixels} pixels, over the limit of {max_pixels:,} "
                      f"(a decompression bomb?)")


def check_size(image: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (before decoding any)."""
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(f"{width}x{height} = {width * height:,}", max_pixels)


def decode(data: bytes, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode and fully load image bytes (first frame of animations), refusing more than ``max_pixels``.

    ``draft`` (width, height): a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps at
    least that size (libjpeg's DCT scaling, ``Image.draft``); other formats ignore it.

    Raises:
        ImageError: empty body, not an image, truncated, corrupt or oversized (never any other
            Pillow error: the bytes are untrusted).
    """
    if not data:
        raise ImageError("empty body")
    try:
        image = Image.open(io.BytesIO(data))
        check_size(image, max_pixels)
        if draft is not None:
            image.draft(image.mode, draft)
        image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        kind = "not an image: an HTML page" if head.startswith((b"<!doctype html", b"<html")) else "not an image"
        raise ImageError(kind) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(f"{int(found.group(1)):,}" if found else "too many", max_pixels) from None
    except MemoryError:
        raise ImageError("image too large to decode: out of memory") from None
    except Exception as error:  # noqa: BLE001 (Pillow raises OSError, SyntaxError, ValueError, struct.error...)
        raise ImageError(f"truncated or corrupt image: {type(error).__name__}: {error}"[:300]) from None
    if image.width == 0 or image.height == 0:
        raise ImageError("image has no pixels")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode (palette, alpha, CMYK, grey, 16-bit) to RGB; transparency becomes white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16B", "I;16N"):  # point() refuses these modes
        image = image.convert("I")
    if image.mode in ("I;16", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("RGB")


_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (2 to 8: turn the stored pixels), 1 when absent or unreadable (a browser then shows
    the photo as stored). Read here, not by ``ImageOps.exif_transpose``, which also writes the EXIF back and
    fails on tags it cannot write."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 (untrusted bytes: Pillow raises SyntaxError, struct.error, ...)
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def upright(image: Image.Image, turn: int) -> Image.Image:
    """``image`` turned by EXIF orientation ``turn`` so that the pixels are as a person sees the photo."""
    method = _ORIENTATION_TRANSPOSE.get(turn)
    return image if method is None else image.transpose(method)


def clip_box(bbox: BBox, width: int, height: int) -> tuple[int, int, int, int]:
    """Round a box to whole pixels and clip it to the image: ``(x0, y0, x1, y1)``, end exclusive.

    Raises:
        ImageError: the box has no overlap with the image.
    """
    x0 = max(0, math.floor(bbox.left))
    y0 = max(0, math.floor(bbox.top))
    x1 = min(width, math.ceil(bbox.left + bbox.width))
    y1 = min(height, math.ceil(bbox.top + bbox.height))
    if x1 <= x0 or y1 <= y0:
        raise ImageError(
            f"box (left {bbox.left}, top {bbox.top}, width {bbox.width}, height {bbox.height}) "
            f"does not overlap the {width}x{height} image"
        )
    return x0, y0, x1, y1


def crop(image: Image.Image, bbox: BBox) -> Image.Image:
    """Cut ``bbox`` (in stored-pixel coordinates, clipped to the image) and return it upright, RGB."""
    box = clip_box(bbox, image.width, image.height)
    return to_rgb(upright(image.crop(box), orientation(image)))


def whole(image: Image.Image) -> Image.Image:
    """The whole photo, upright and RGB."""
    return to_rgb(upright(image, orientation(image)))


def load(path: str | Path) -> Image.Image:
    """Open an image file as upright RGB.

    Raises:
        FileNotFoundError: no such file.
        ImageError: the file is not a readable image.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return whole(decode(data))
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from None


def save_jpeg(image: Image.Image, path: str | Path, quality: int = 95) -> None:
    """Write a JPEG atomically and durably (``common.atomic_path``: temporary file, fsync, rename).

    Pixels only: Pillow would copy the source's comment, and one over a JPEG marker's 64 kB raises."""
    with atomic_path(path) as temp:
        image.save(temp, format="JPEG", quality=quality, comment=b"")


def is_complete_jpeg(path: str | Path) -> bool:
    """Cheap check that a JPEG this package saved is whole: it starts with SOI and ends with EOI.

    Reads four bytes (a full decode of every image on resume would take minutes at the data set's size).
    Catches what a power loss or a kill leaves: an empty file, or one cut short.
    """
    try:
        with open(path, "rb") as handle:
            start = handle.read(2)
            handle.seek(0, os.SEEK_END)
            if handle.tell() < 4:
                return False
            handle.seek(-2, os.SEEK_END)
            return start == b"\xff\xd8" and handle.read(2) == b"\xff\xd9"
    except OSError:
        return False
