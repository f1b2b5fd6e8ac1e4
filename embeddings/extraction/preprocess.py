"""One way from any image to a network input, shared by building, querying and training.

An image (a path, a PIL image or an RGB array) becomes upright RGB, optionally cropped to a box,
resized to the backbone's input size (bilinear, aspect ratio not kept, as ``keras.utils.load_img``
does), then passed through the backbone's own ``preprocess_input``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image

from downloader import images
from downloader.metadata import BBox

ImageSource = Union[str, Path, Image.Image, np.ndarray]


def to_pil(source: ImageSource, bbox: BBox | None = None) -> Image.Image:
    """Upright RGB PIL image from a path, a PIL image or an ``HxWx3``/``HxW`` uint8 array, cut to ``bbox``.

    Raises:
        FileNotFoundError: a path that does not exist.
        downloader.ImageError: unreadable image, bad array, or a box outside the image.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            decoded = images.decode(path.read_bytes())
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


def to_input(image: Image.Image, size: tuple[int, int],
             preprocess: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Resize to ``size`` (height, width) and apply the backbone's ``preprocess_input``: float32 ``HxWx3``."""
    height, width = size
    pixels = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.asarray(preprocess(pixels[None]), dtype=np.float32)[0]
