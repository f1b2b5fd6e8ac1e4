"""The pre-trained networks an image can be embedded with, each cut below its classifier, taking pixels.

Keras is imported inside the functions, so importing this module stays fast.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from .precision import POLICIES

logger = logging.getLogger(__name__)

BackboneName = Literal["vgg19", "vgg16", "resnet50", "mobilenet_v2"]


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be downloaded (no internet); the message names the way out."""


@dataclass(frozen=True)
class Backbone:
    """A network cut at ``layer``: ``dim``-d vectors from ``input_size`` RGB images.

    ``application`` and ``preprocess`` are ``"module.attribute"`` names under ``keras.applications``,
    so that a spec is plain data. The vector is the input of the model's ``predictions`` layer (``layer``
    names it). ``factory(weights=...)``, when set, builds the full model instead (a tiny one in tests).
    """

    name: str
    application: str
    preprocess: str
    layer: str
    dim: int
    input_size: tuple[int, int] = (224, 224)
    factory: Callable[..., Any] | None = None


BACKBONES: dict[str, Backbone] = {
    "vgg19": Backbone("vgg19", "vgg19.VGG19", "vgg19.preprocess_input", "fc2", 4096),
    "vgg16": Backbone("vgg16", "vgg16.VGG16", "vgg16.preprocess_input", "fc2", 4096),
    "resnet50": Backbone("resnet50", "resnet50.ResNet50", "resnet50.preprocess_input", "avg_pool", 2048),
    "mobilenet_v2": Backbone("mobilenet_v2", "mobilenet_v2.MobileNetV2", "mobilenet_v2.preprocess_input",
                             "global_average_pooling2d", 1280),
}


def get_backbone(backbone: str | Backbone) -> Backbone:
    """Look a backbone up by name (or pass a spec through).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if isinstance(backbone, Backbone):
        return backbone
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}") from None


def keras_application(dotted: str) -> Any:
    """The Keras application constructor named ``module.Name`` (e.g. ``vgg19.VGG19``)."""
    import keras

    module, attribute = dotted.split(".")
    return getattr(getattr(keras.applications, module), attribute)


def preprocess_function(spec: Backbone) -> Callable[[np.ndarray], np.ndarray]:
    """The backbone's own ``preprocess_input`` (RGB 0-255 in, the network's input out)."""
    return keras_application(spec.preprocess)


def weights_id(weights: str | Path | None) -> str:
    """What the weights are, for the cache's attributes: ``imagenet``, ``random:0`` or ``sha256:<hex>`` of a file."""
    if weights is None or str(weights).lower() == "none":
        return "random:0"
    if weights == "imagenet":
        return "imagenet"
    digest = hashlib.sha256()
    with Path(weights).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def _randomise(model: Any, seed: int) -> None:
    """Give every kernel He-uniform values from a seeded NumPy generator, so that random weights are
    the same in every process (the index and the query must share them)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "kernel" not in variable.path:
            continue
        shape = tuple(variable.shape)
        fan_in = int(np.prod(shape[:-1])) if "depthwise" not in variable.path else int(np.prod(shape[:2]))
        limit = np.sqrt(6.0 / max(fan_in, 1))
        variable.assign(rng.uniform(-limit, limit, size=shape).astype(np.float32))


def full_model(spec: Backbone, weights: str | Path | None, precision: str = "float32") -> Any:
    """The whole application network, classifier included, with its weights: ImageNet (downloaded by Keras
    on first use), a local weights file of the full model, or ``None`` (random, seeded: the same in every
    process). Shared by the build's cut model and the fine-tuned tower.

    Raises:
        FileNotFoundError: the weights file does not exist.
        WeightsUnavailableError: the ImageNet download failed.
    """
    import keras

    if weights is not None and weights != "imagenet":
        if str(weights).lower() == "none":
            weights = None
        elif not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: weights file does not exist")
    build = spec.factory or keras_application(spec.application)
    previous = keras.config.dtype_policy()  # the policy is per thread: set it only while building
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        full = build(weights=None if weights is None else str(weights))
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"could not download the ImageNet weights for {spec.name} ({str(error).splitlines()[0][:160]}); "
            f"on a machine without internet pass a local weights file with --weights PATH "
            f"(Keras' weights file of the full {spec.name} model), or --weights none for random weights"
        ) from None
    finally:
        keras.config.set_dtype_policy(previous)
    if weights is None:
        _randomise(full, seed=0)
    return full


def build_model(spec: Backbone, weights: str | Path | None, precision: str = "float32") -> Any:
    """The keras model from ``uint8`` RGB pixels to the cut layer's vector, ``preprocess_input`` inside.

    Args:
        weights: ``"imagenet"`` (downloaded by Keras on first use), a local weights file of the full
            model, or ``None`` (random, seeded).
        precision: ``float32``, ``bfloat16`` or ``float16`` (Keras' mixed policy: float32 variables,
            the network computed in the lower precision; the preprocessing stays float32).

    Raises:
        FileNotFoundError: the weights file does not exist.
        WeightsUnavailableError: the ImageNet download failed.
    """
    import keras

    full = full_model(spec, weights, precision)
    cut = keras.Model(full.inputs, full.get_layer("predictions").input, name=f"{spec.name}_{spec.layer}")
    pixels = keras.Input((*spec.input_size, 3), dtype="uint8", name="pixels")
    preprocess = preprocess_function(spec)
    inputs = keras.layers.Lambda(lambda x: preprocess(keras.ops.cast(x, "float32")), dtype="float32",
                                 name="preprocess_input")(pixels)
    return keras.Model(pixels, cut(inputs), name=f"{spec.name}_{spec.layer}_from_pixels")
