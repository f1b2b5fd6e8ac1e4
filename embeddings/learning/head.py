"""The Siamese head: Dense layers over a backbone vector, ending in an L2-normalised embedding.

One tower embeds both sides of a pair (street and shop), so a street crop and a shop photo of the
same product land close together. A trained head is a folder: ``model.keras`` and ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HeadConfig:
    """Architecture: hidden layer sizes, output size, dropout, batch normalisation; ``seed`` for initialisers."""

    hidden: tuple[int, ...] = (1024,)
    dim: int = 128
    dropout: float = 0.2
    batch_norm: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.dim < 1 or any(size < 1 for size in self.hidden):
            raise ValueError(f"layer sizes must be positive, got hidden={self.hidden}, dim={self.dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def build_head(input_dim: int, config: HeadConfig = HeadConfig()) -> Any:
    """The tower ``vector -> embedding`` (functional Keras, seeded initialisers and dropout)."""
    import keras

    config.validate()
    seed = config.seed
    inputs = keras.Input((input_dim,), name="vector")
    x = keras.layers.BatchNormalization(name="input_norm")(inputs) if config.batch_norm else inputs
    for index, size in enumerate(config.hidden):
        x = keras.layers.Dense(size, use_bias=not config.batch_norm, name=f"dense_{index}",
                               kernel_initializer=keras.initializers.HeNormal(seed=seed + index))(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization(name=f"norm_{index}")(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, seed=seed + 100 + index, name=f"dropout_{index}")(x)
    x = keras.layers.Dense(config.dim, name="embedding",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1000))(x)
    outputs = keras.layers.UnitNormalization(axis=-1, name="l2_normalise")(x)
    return keras.Model(inputs, outputs, name="siamese_head")


def build_pair_model(head: Any) -> Any:
    """Two inputs through the same ``head``; the output is their Euclidean distance (for contrastive training)."""
    import keras
    from keras import ops

    dim = head.input.shape[-1]
    left, right = keras.Input((dim,), name="left"), keras.Input((dim,), name="right")
    difference = head(left) - head(right)
    distance = ops.sqrt(ops.maximum(ops.sum(ops.square(difference), axis=-1, keepdims=True), 1e-12))
    return keras.Model([left, right], distance, name="siamese_pair")


def file_hash(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class Calibration:
    """Distance to a same-item score ``sigmoid(a * d + b)`` and the same/different ``threshold`` on d."""

    a: float = -10.0
    b: float = 5.0
    threshold: float = 0.5
    pair_accuracy: float | None = None

    def score(self, distances: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(distances, dtype=np.float64) + self.b)))


@dataclass
class Head:
    """A trained head loaded for use: ``embed`` vectors, ``score`` distances. ``identity`` names it in indexes."""

    model: Any
    config: dict[str, Any]
    calibration: Calibration
    identity: str
    path: Path | None = None
    backbone: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.model.output.shape[-1])

    def embed(self, vectors: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.model.input.shape[-1]:
            raise ValueError(f"head expects vectors of dimension {self.model.input.shape[-1]}, got shape {vectors.shape}")
        if not len(vectors):
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([np.asarray(self.model.predict_on_batch(vectors[i:i + batch_size]), np.float32)
                               for i in range(0, len(vectors), batch_size)])

    def compare(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Is each pair of backbone vectors the same item? ``(distance, score in [0, 1], same)``, where
        ``same`` is ``distance <= threshold`` as chosen on validation."""
        left, right = np.atleast_2d(left), np.atleast_2d(right)
        distance = np.linalg.norm(self.embed(left) - self.embed(right), axis=1).astype(np.float64)
        return distance, self.calibration.score(distance), distance <= self.calibration.threshold


def load_head(folder: str | Path) -> Head:
    """Load ``folder/model.keras`` and ``folder/config.json``.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: the files are not a head of this project.
    """
    import keras

    folder = Path(folder)
    model_path, config_path = folder / "model.keras", folder / "config.json"
    for path in (model_path, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: head file does not exist (train one with python -m embeddings.train)")
    try:
        config = json.loads(config_path.read_text())
        model = keras.models.load_model(model_path, compile=False)
    except (ValueError, OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder}: not a readable head ({str(error).splitlines()[0][:200]})") from None
    calibration = Calibration(**config.get("calibration", {}))
    return Head(model, config, calibration, identity=file_hash(model_path), path=folder,
                backbone=config.get("vectors", {}))
