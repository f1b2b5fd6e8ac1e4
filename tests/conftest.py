"""Shared fixtures: tiny generated images (no network, no real weights)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def make_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A smooth, position-dependent RGB image, so that crops and rotations are easy to recognise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 1, size=3)
    pixels = np.stack([
        255 * (x / max(width - 1, 1)),
        255 * (y / max(height - 1, 1)),
        255 * (0.5 + 0.5 * np.sin(x / 5 + y / 7 + base[2] * 6)),
    ], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format=fmt, **params)
    return stream.getvalue()


@pytest.fixture
def rgb_image() -> Image.Image:
    return make_image()
