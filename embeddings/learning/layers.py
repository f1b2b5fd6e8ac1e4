"""Keras layers saved inside a tower's ``model.keras``: the backbone's own input scaling, in the graph.

Importing this module registers them, so ``keras.models.load_model`` can read a tower back.
"""

from __future__ import annotations

import keras
from keras import ops

# keras.applications' modes: caffe (RGB to BGR, ImageNet means subtracted), tf (to [-1, 1]), unit (to [0, 1]).
CAFFE_MEANS = (103.939, 116.779, 123.68)
MODES = ("caffe", "tf", "unit")
LUMA = (0.299, 0.587, 0.114)


@keras.saving.register_keras_serializable(package="street2shop")
class PixelScaling(keras.layers.Layer):
    """RGB pixels in 0-255 to what the backbone was trained on (equal to its ``preprocess_input``); with
    ``grey``, first to one channel of ITU-R 601 luma (PIL's ``L``), for towers trained on grayscale."""

    def __init__(self, mode: str = "unit", grey: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"pixel scaling mode must be one of {MODES}, got {mode!r}")
        self.mode, self.grey = mode, bool(grey)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.grey:
            x = ops.sum(x * ops.convert_to_tensor(LUMA, "float32"), axis=-1, keepdims=True)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEANS, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x / 255.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1) if self.grey else input_shape

    def get_config(self) -> dict:
        return dict(super().get_config(), mode=self.mode, grey=self.grey)
