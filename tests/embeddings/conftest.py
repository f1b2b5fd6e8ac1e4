"""A tiny stand-in backbone, so that most embedding tests run in well under a second a batch."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings import Backbone, Extractor


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
