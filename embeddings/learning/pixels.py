"""Images for end-to-end training: a lazy array of image files that the head's samplers can index, and a
sampler wrapper that decodes the chosen batch.

Files go through the same preprocessing as ``embeddings.build`` and queries (``extraction.preprocess``:
upright RGB, bilinear resize to the input size, uint8); the rest of the preprocessing is inside the tower.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from PIL import Image

from ..extraction.preprocess import load_pixels, to_pixels


class LazyImages:
    """``items`` seen as an N x H x W x 3 uint8 array at ``size``, decoded only when read: an integer index gives
    one image (``read``), an array, a mask or a slice another sequence of the same kind (nothing is decoded)."""

    def __init__(self, items: Any, size: tuple[int, int]) -> None:
        self.items = items
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.items), *self.size, 3)

    def __getitem__(self, index: Any) -> "LazyImages | np.ndarray":
        if isinstance(index, (int, np.integer)):
            return self.read(self.items[index])
        return self._like(self.items[index])

    def read(self, item: Any) -> np.ndarray:
        raise NotImplementedError

    def _like(self, items: Any) -> "LazyImages":
        return type(self)(items, self.size)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        batch = np.stack([self.read(item) for item in self.items]) if len(self) else np.zeros(self.shape, np.uint8)
        return batch if dtype is None else batch.astype(dtype)


class ImageFiles(LazyImages):
    """Image files as a lazy array (``LazyImages``); ``np.asarray`` decodes them in threads."""

    def __init__(self, files: np.ndarray | list[Path], size: tuple[int, int], workers: int = 4) -> None:
        super().__init__(np.asarray(files, dtype=object), size)
        self.workers = workers

    def _like(self, items: Any) -> "ImageFiles":
        return ImageFiles(items, self.size, self.workers)

    def read(self, path: str | Path) -> np.ndarray:
        """One image as H x W x 3 uint8. Raises FileNotFoundError or ``downloader.ImageError`` naming it."""
        return load_pixels(path, self.size)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if not len(self):
            return np.zeros(self.shape, dtype or np.uint8)
        with ThreadPoolExecutor(min(self.workers, len(self)), thread_name_prefix="pixels") as pool:
            batch = np.stack(list(pool.map(self.read, self.items)))
        return batch if dtype is None else batch.astype(dtype)


class ResizedImages(LazyImages):
    """Images in memory (N x h x w grey, or N x h x w x 3) as a lazy array (``LazyImages``), each resized as an
    image file is for ``embeddings.build`` (PIL, bilinear) only when read."""

    def read(self, image: np.ndarray) -> np.ndarray:
        return to_pixels(Image.fromarray(image).convert("RGB"), self.size)


def chunks(pixels: Any, size: int):
    """``pixels`` (an array, ``ImageFiles`` or ``ResizedImages``) as decoded arrays of up to ``size`` images."""
    for start in range(0, len(pixels), size):
        yield np.asarray(pixels[start:start + size])


class PixelEmbedder:
    """The tower behind the head's ``predict(items, batch_size, verbose)`` interface (``feed.ValidationCallback``),
    embedding images in chunks of ``batch_size`` images whatever the caller asks for."""

    def __init__(self, tower: Any, batch_size: int = 64) -> None:
        self.tower, self.batch_size = tower, batch_size

    def predict(self, pixels: Any, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        return embed_pixels(self.tower, pixels, self.batch_size)


class PixelBatches:
    """Wrap a head sampler (``TripletSampler``/``PairSampler`` over pixel items) so that its batches come
    back decoded: the samplers pick rows, this reads only those images."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def batch(self, rng: np.random.Generator) -> tuple[Any, np.ndarray]:
        inputs, targets = self.sampler.batch(rng)
        if isinstance(inputs, tuple):
            return tuple(np.asarray(side) for side in inputs), targets
        return np.asarray(inputs), targets


def embed_pixels(tower: Any, pixels: Any, batch_size: int = 64) -> np.ndarray:
    """The tower's embeddings of ``pixels`` (an array or ``ImageFiles``), in inference mode, chunk by chunk."""
    parts = [np.asarray(tower.predict_on_batch(np.asarray(chunk, np.float32)), np.float32)
             for chunk in chunks(pixels, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, int(tower.output.shape[-1])), np.float32)


def raw_pixels(pixels: Any, side: int = 32) -> np.ndarray:
    """The baseline: pixels as unit-length vectors (every ``k``-th row and column, so at most ``side`` of each)."""
    pixels = np.asarray(pixels)
    step = max(1, math.ceil(max(pixels.shape[1:3]) / side))
    flat = pixels[:, ::step, ::step].reshape(len(pixels), -1).astype(np.float32)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
