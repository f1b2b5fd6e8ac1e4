"""Training-time augmentation with Keras preprocessing layers: random resized crop, flip, colour jitter.

Every layer is seeded, so a run repeats exactly, and every layer is the identity at inference
(``training=False``: ``predict``, building a cache, answering a query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AugmentConfig:
    """How strong each transform is. ``zoom``: up to this share of each side cut away (a random resized crop:
    sides cut independently, so the aspect ratio changes too); ``shift``: the crop's centre moves by up to
    this share of a side; ``brightness``, ``contrast``, ``saturation``, ``hue``: colour jitter amounts."""

    zoom: float = 0.3
    shift: float = 0.1
    flip: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05

    def validate(self) -> None:
        for name in ("zoom", "shift", "brightness", "contrast", "saturation", "hue"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"augmentation {name} must be in [0, 1), got {value}")


def build_augmentation(seed: int, config: AugmentConfig = AugmentConfig()) -> Any:
    """A ``keras.Sequential`` of seeded random layers over RGB images with values in 0-255."""
    import keras

    config.validate()
    layers = [
        keras.layers.RandomZoom((-config.zoom, 0.0), (-config.zoom, 0.0), fill_mode="reflect", seed=seed,
                                name="random_resized_crop"),
        keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="reflect", seed=seed + 1,
                                       name="random_crop_position"),
    ]
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2, name="random_flip"))
    layers.append(keras.layers.RandomColorJitter(
        value_range=(0, 255), brightness_factor=config.brightness or None, contrast_factor=config.contrast or None,
        saturation_factor=(0.5 - config.saturation / 2, 0.5 + config.saturation / 2) if config.saturation else None,
        hue_factor=config.hue or None, seed=seed + 3, name="colour_jitter"))
    return keras.Sequential(layers, name="augment")
