"""One way from any image to network pixels, shared by building, querying and training.

An image (a path, a PIL image or an RGB array) becomes upright RGB, optionally cropped to a box, and
is resized to the backbone's input size (bilinear, aspect ratio not kept, as ``keras.utils.load_img``
does) as ``uint8`` pixels. The backbone's own ``preprocess_input`` runs inside the model (see
``backbones.build_model``), so the same pixels give the same vector on any device.

Decoding modes: ``exact`` decodes every pixel; ``fast`` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8
scale (Pillow's ``Image.draft``) when the photo is at least twice the input size, then resizes. The
mode changes pixels slightly, so it is part of a cache's identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Union

import numpy as np
from PIL import Image

from downloader import images
from downloader.metadata import BBox

ImageSource = Union[str, Path, Image.Image, np.ndarray]
DecodeMode = Literal["exact", "fast"]
DECODE_MODES: tuple[str, ...] = ("exact", "fast")
DEFAULT_DECODE = "exact"


def check_decode(mode: str) -> str:
    """Validate a decoding mode; ValueError naming it otherwise."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {list(DECODE_MODES)}, got {mode!r}")
    return mode


def to_pil(source: ImageSource, bbox: BBox | None = None, draft: tuple[int, int] | None = None) -> Image.Image:
    """Upright RGB PIL image from a path, a PIL image or an ``HxWx3``/``HxW`` uint8 array, cut to ``bbox``.

    ``draft`` (width, height), for a whole JPEG file: decode at the smallest 1/2, 1/4 or 1/8 scale that
    keeps at least that size (``fast`` decoding); ignored for crops and already decoded images.

    Raises:
        FileNotFoundError: a path that does not exist.
        downloader.ImageError: unreadable or oversized image, bad array, or a box outside the image.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            decoded = images.decode(path.read_bytes(), draft=draft if bbox is None else None)
        except images.ImageError as error:
            raise images.ImageError(f"{path}: {error}") from None
        return images.whole(decoded) if bbox is None else images.crop(decoded, bbox)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise images.ImageError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {source.shape}")
        source = Image.fromarray(np.clip(source, 0, 255).astype(np.uint8))
    if not isinstance(source, Image.Image):
        raise TypeError(f"expected a path, a PIL image or an array, got {type(source).__name__}")
    return images.to_rgb(source) if bbox is None else images.crop(source, bbox)


def to_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (height, width), bilinear: ``uint8`` ``HxWx3``, what the model takes."""
    height, width = size
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def load_pixels(source: ImageSource, size: tuple[int, int], decode: str = "exact",
                bbox: BBox | None = None) -> np.ndarray:
    """The network's ``uint8`` pixels for one image (the shared preprocessing up to the model).

    Raises:
        FileNotFoundError, downloader.ImageError: naming the image.
    """
    side = max(size)
    draft = (side, side) if decode == "fast" else None  # square: the same whatever the EXIF rotation
    return to_pixels(to_pil(source, bbox, draft), size)


def to_input(image: Image.Image, size: tuple[int, int],
             preprocess: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Resize and apply ``preprocess`` outside any model: float32 ``HxWx3`` (for code that feeds a bare network)."""
    pixels = to_pixels(image, size).astype(np.float32)
    return np.asarray(preprocess(pixels[None]), dtype=np.float32)[0]
