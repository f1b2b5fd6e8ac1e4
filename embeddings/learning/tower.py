"""The tower trained end to end on pixels: [augmentation] -> the backbone's scaling -> backbone (its top
fraction trainable, BatchNorm frozen and in inference mode) -> the Siamese head -> unit-length embedding.

``small-cnn`` is the Fashion-MNIST projects' tower instead: four convolutions, then the head's two dense
layers, on grayscale images, trained from scratch. A trained tower is a folder (``model.keras``,
``config.json``) that ``load_tower`` reads for ``embeddings.build --model`` and for queries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .augment import build_augmentation
from .head import Calibration, HeadConfig, build_head, file_hash

logger = logging.getLogger(__name__)

TOWER_FORMAT = "street2shop-tower/1"
SMALL_CNN = "small-cnn"
TOWER_BACKBONES = ("vgg19", "vgg16", "resnet50", "mobilenet_v2", SMALL_CNN)
SCALING = {"vgg19": "caffe", "vgg16": "caffe", "resnet50": "caffe", "mobilenet_v2": "tf", SMALL_CNN: "unit"}


@dataclass(frozen=True)
class TowerConfig:
    """Architecture of a tower. ``trainable``: the top share of the backbone's layers with weights (BatchNorm
    not counted) that learn; ``weights``: ``imagenet``, a local weights file of the full model, or None
    (seeded random); ``input_size`` defaults to the backbone's (224 x 224; 28 x 28 for small-cnn)."""

    backbone: str = "vgg19"
    weights: str | None = "imagenet"
    trainable: float | None = None
    augment: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    input_size: tuple[int, int] | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.backbone not in TOWER_BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; expected one of {list(TOWER_BACKBONES)}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"trainable fraction must be in [0, 1], got {self.trainable}")
        if self.backbone == SMALL_CNN and (self.fraction != 1 or self.weights is not None):
            raise ValueError("small-cnn is trained from scratch: use --trainable 1 (the default) and --weights none")
        height, width = self.size
        if min(height, width) < (28 if self.backbone == SMALL_CNN else 32):
            raise ValueError(f"input size {height}x{width} is too small for {self.backbone}")
        self.head.validate()

    @property
    def fraction(self) -> float:
        return self.trainable if self.trainable is not None else (1.0 if self.backbone == SMALL_CNN else 0.3)

    @property
    def size(self) -> tuple[int, int]:
        if self.input_size is not None:
            return tuple(self.input_size)
        return (28, 28) if self.backbone == SMALL_CNN else (224, 224)

    @property
    def grey(self) -> bool:
        """small-cnn sees one channel (luma); its input is RGB pixels like every tower's."""
        return self.backbone == SMALL_CNN


def small_cnn(input_shape: tuple[int, int, int], seed: int) -> Any:
    """Four 3x3 convolutions (32, 32, 64, 64; max-pooling after the second and fourth), flattened."""
    import keras

    inputs = keras.Input(input_shape, name="pixels")
    x = inputs
    for index, filters in enumerate((32, 32, 64, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index + 1}",
                                kernel_initializer=keras.initializers.HeNormal(seed=seed + index))(x)
        if index % 2:
            x = keras.layers.MaxPooling2D(name=f"pool{index // 2 + 1}")(x)
    return keras.Model(inputs, keras.layers.Flatten(name="flatten")(x), name="small_cnn")


def _full_model(name: str, weights: str | None) -> Any:
    """The whole application network (with its classifier) and its weights, loaded as ``embeddings.build``
    loads them."""
    from ..extraction.backbones import full_model, get_backbone

    return full_model(get_backbone(name), weights)


def pretrained_trunk(name: str, weights: str | None, size: tuple[int, int]) -> Any:
    """The backbone cut where ``embeddings.build`` cuts it (VGG: fc2), taking scaled pixels; at another input
    size than 224 x 224, its convolutional part with global average pooling, weights copied by layer name."""
    import keras

    from ..extraction.backbones import keras_application, get_backbone

    spec = get_backbone(name)
    full = _full_model(name, weights)
    if tuple(size) == tuple(spec.input_size):
        return keras.Model(full.inputs, full.get_layer("predictions").input, name=f"{name}_{spec.layer}")
    trunk = keras_application(spec.application)(include_top=False, weights=None, input_shape=(*size, 3), pooling="avg")
    source = {layer.name: layer for layer in full.layers}
    for layer in trunk.layers:
        if layer.weights and layer.name in source:
            layer.set_weights(source[layer.name].get_weights())
    return trunk


def learning_layers(model: Any) -> list[Any]:
    """The layers a trainable fraction counts: those with weights, BatchNorm excluded, bottom to top."""
    import keras

    return [layer for layer in model.layers
            if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]


def set_trainable(trunk: Any, fraction: float) -> list[str]:
    """Make the top ``round(fraction * n)`` of the trunk's ``n`` learning layers trainable, every other layer
    (BatchNorm always) frozen; returns the names of the trainable ones."""
    import keras

    layers = learning_layers(trunk)
    count = int(round(fraction * len(layers)))
    chosen = {id(layer) for layer in layers[len(layers) - count:]} if count else set()
    trunk.trainable = True
    for layer in trunk.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in layers if id(layer) in chosen]


def build_tower(config: TowerConfig) -> Any:
    """The tower ``RGB pixels (0-255) -> embedding``; the backbone is called with ``training=False`` so that its
    BatchNorm layers keep their ImageNet statistics (the usual recipe for fine-tuning)."""
    import keras

    from .layers import PixelScaling

    config.validate()
    if config.backbone == SMALL_CNN:
        trunk = small_cnn((*config.size, 1), config.seed)
    else:
        trunk = pretrained_trunk(config.backbone, config.weights, config.size)
    trainable = set_trainable(trunk, config.fraction)
    logger.info("%s: %d trainable layers (%s ... %s)", config.backbone, len(trainable),
                trainable[:1], trainable[-1:])
    inputs = keras.Input((*config.size, 3), name="pixels")
    x = build_augmentation(config.seed)(inputs) if config.augment else inputs
    x = PixelScaling(SCALING[config.backbone], config.grey, name="scaling")(x)
    x = trunk(x, training=False)
    head = build_head(int(x.shape[-1]), config.head)
    return keras.Model(inputs, head(x), name="tower")


def build_image_pair_model(tower: Any) -> Any:
    """Two images through the same tower; the output is their Euclidean distance (contrastive training)."""
    import keras
    from keras import ops

    shape = tuple(tower.input.shape[1:])
    left, right = keras.Input(shape, name="left"), keras.Input(shape, name="right")
    difference = tower(left) - tower(right)
    distance = ops.sqrt(ops.maximum(ops.sum(ops.square(difference), axis=-1, keepdims=True), 1e-12))
    return keras.Model([left, right], distance, name="siamese_pair")


@dataclass
class Tower:
    """A trained tower loaded for use. ``identity`` is what a cache or index built with it records."""

    model: Any
    config: dict[str, Any]
    calibration: Calibration
    identity: dict[str, Any]
    path: Path

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.model.input.shape[1:3])

    @property
    def dim(self) -> int:
        return int(self.model.output.shape[-1])

    def embed(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Embeddings of RGB pixels already at the input size (N x H x W x 3, 0-255)."""
        if not len(pixels):
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([np.asarray(self.model.predict_on_batch(np.asarray(pixels[i:i + batch_size], np.float32)),
                                          np.float32) for i in range(0, len(pixels), batch_size)])


def tower_identity(folder: Path, config: dict[str, Any], model: Any) -> dict[str, Any]:
    """What vectors made by this tower are: backbone ``tower:<name>``, the model file's hash as the weights."""
    return {"backbone": f"tower:{config['tower']['backbone']}", "layer": "embedding",
            "weights": file_hash(folder / "model.keras"), "input_size": [int(v) for v in model.input.shape[1:3]],
            "dim": int(model.output.shape[-1])}


def load_tower(folder: str | Path) -> Tower:
    """Load a tower folder written by ``python -m embeddings.finetune``.

    Raises:
        FileNotFoundError: ``model.keras`` or ``config.json`` is missing.
        ValueError: the folder is not a tower of this project.
    """
    import keras

    from . import layers  # noqa: F401  registers PixelScaling for load_model

    folder = Path(folder)
    for name in ("model.keras", "config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: tower file does not exist "
                                    f"(train one with python -m embeddings.finetune)")
    try:
        config = json.loads((folder / "config.json").read_text())
        if config.get("format") != TOWER_FORMAT:
            raise ValueError(f"format {config.get('format')!r}, expected {TOWER_FORMAT!r}")
        model = keras.models.load_model(folder / "model.keras", compile=False)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise ValueError(f"{folder}: not a readable tower ({str(error).splitlines()[0][:200]})") from None
    return Tower(model, config, Calibration(**config.get("calibration", {})), tower_identity(folder, config, model),
                 folder)


def tower_settings(config: TowerConfig) -> dict[str, Any]:
    """The tower's settings as written to ``config.json`` (defaults resolved)."""
    return {"backbone": config.backbone, "weights": config.weights, "trainable": config.fraction,
            "augment": config.augment, "input_size": list(config.size), "grey": config.grey,
            "seed": config.seed, "head": asdict(config.head)}
