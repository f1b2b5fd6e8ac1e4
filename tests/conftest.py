"""Shared fixtures: tiny generated images (no network, no real weights)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from embeddings import Backbone, Extractor


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


# A tiny stand-in backbone, so that most embedding tests run in well under a second a batch.
def tiny_model(weights=None):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(8, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(3, name="predictions")(x)
    model = keras.Model(inputs, outputs)
    if weights is not None:
        model.load_weights(weights)
    return model


TINY = Backbone("tiny", "", "vgg19.preprocess_input", "features", 8, input_size=(32, 32), factory=tiny_model)


@pytest.fixture(scope="session")
def tiny_extractor() -> Extractor:
    return Extractor(TINY, weights=None, batch_size=4, workers=2)


def random_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
