"""Train the Siamese head over cached vectors and write ``model.keras``, ``config.json``, ``history.json``
and ``training.png`` into one folder."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..extraction.cache import read_vectors
from .head import Calibration, HeadConfig, build_head, build_pair_model
from .losses import MINING, contrastive_loss, triplet_loss
from .metrics import euclidean_distances, first_hit_rank, fit_calibration, pair_accuracy, topk_accuracy
from .samplers import ItemSet, PairSampler, TripletSampler, from_labels, from_manifest, split_validation

logger = logging.getLogger(__name__)

HEAD_FORMAT = "street2shop-head/1"


@dataclass
class TrainConfig:
    """One training run. ``margin`` defaults to 0.2 (triplet) or 1.0 (contrastive) on unit-length embeddings."""

    vectors: Path
    out: Path
    manifest: Path | None = None
    loss: Literal["triplet", "contrastive"] = "triplet"
    mining: str = "semi-hard"
    margin: float | None = None
    head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    per_class: int = 4
    negatives_per_positive: float = 1.0
    in_class: float = 0.5
    val_fraction: float = 0.15
    patience: int = 5
    steps_per_epoch: int | None = None
    seed: int = 0
    progress: bool = False

    def validate(self) -> None:
        if self.loss not in ("triplet", "contrastive"):
            raise ValueError(f"loss must be triplet or contrastive, got {self.loss!r}")
        if self.mining not in MINING:
            raise ValueError(f"mining must be one of {list(MINING)}, got {self.mining!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch size >= 2, got {self.epochs}, {self.batch_size}")
        if self.manifest is not None and not Path(self.manifest).is_file():
            raise FileNotFoundError(f"{self.manifest}: manifest does not exist")
        self.head.validate()

    @property
    def effective_margin(self) -> float:
        return self.margin if self.margin is not None else (0.2 if self.loss == "triplet" else 1.0)


@dataclass
class TrainResult:
    """Validation figures of raw (L2-normalised) vectors and of the trained head, and where it went."""

    out: Path
    raw: dict[str, float]
    head: dict[str, float]
    best_epoch: int
    epochs_run: int


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _validation_pairs(items: ItemSet, rng: np.random.Generator, limit: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Matching and as many non-matching (query, gallery) index pairs, half of the latter in-category."""
    sampler = PairSampler(items, batch_size=limit, negatives=1.0, in_class=0.5)
    anchors = sampler.queries[rng.integers(len(sampler.queries), size=limit)]
    positives = sampler.partners(anchors, rng, matching=True)
    negatives = sampler.partners(anchors, rng, matching=False)
    keep = positives != anchors  # a labelled folder: a pair of an item with itself says nothing
    return np.stack([anchors[keep], positives[keep]], 1), np.stack([anchors, negatives], 1)


def evaluate_embeddings(embedded: np.ndarray, items: ItemSet, pairs: tuple[np.ndarray, np.ndarray],
                        calibration: Calibration | None = None) -> tuple[dict[str, float], Calibration]:
    """Top-1/top-10 retrieval (street queries against shop gallery, within category) and pair accuracy."""
    queries, gallery = np.flatnonzero(items.query), np.flatnonzero(items.gallery)
    distances = euclidean_distances(embedded[queries], embedded[gallery])
    ranks = first_hit_rank(distances, items.labels[queries], items.labels[gallery], items.groups[queries],
                           items.groups[gallery], exclude_self=items.same_sides)
    accuracy = topk_accuracy(ranks, (1, 10))
    positive = np.linalg.norm(embedded[pairs[0][:, 0]] - embedded[pairs[0][:, 1]], axis=1)
    negative = np.linalg.norm(embedded[pairs[1][:, 0]] - embedded[pairs[1][:, 1]], axis=1)
    calibration = calibration or fit_calibration(positive, negative)
    return {"top1": accuracy[1], "top10": accuracy[10],
            "pair_accuracy": pair_accuracy(positive, negative, calibration.threshold)}, calibration


def load_items(config: TrainConfig) -> tuple[ItemSet, dict[str, Any]]:
    vectors = read_vectors(config.vectors)
    items = from_manifest(vectors, config.manifest) if config.manifest is not None else from_labels(vectors)
    identity = {key: vectors.attrs.get(key) for key in ("backbone", "layer", "weights", "input_size", "dim")}
    return items, dict(identity, file=str(config.vectors))


def _write_json(path: Path, data: Any) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=True, default=float)
    os.replace(temp, path)


def train(config: TrainConfig) -> TrainResult:
    """Train a head; the best epoch by validation top-10 accuracy is kept (early stopping).

    Raises:
        FileNotFoundError, ValueError, CacheError: bad inputs, named.
    """
    config.validate()
    import keras

    from .feed import SamplerDataset, ValidationCallback
    from .plots import plot_training

    items, vectors_identity = load_items(config)
    train_items, val_items = split_validation(items, config.val_fraction, config.seed)
    rng = np.random.default_rng(config.seed)
    val_pairs = _validation_pairs(val_items, rng)
    raw, raw_calibration = evaluate_embeddings(_normalise(val_items.vectors), val_items, val_pairs)
    logger.info("raw vectors: validation top-1 %.3f top-10 %.3f", raw["top1"], raw["top10"])

    head = build_head(items.vectors.shape[1], config.head)
    margin = config.effective_margin
    steps = config.steps_per_epoch or max(1, math.ceil(len(train_items) / config.batch_size))
    if config.loss == "triplet":
        sampler = TripletSampler(train_items, config.batch_size, config.per_class, config.in_class)
        model, loss = head, triplet_loss(margin, config.mining)
    else:
        sampler = PairSampler(train_items, config.batch_size, config.negatives_per_positive, config.in_class)
        model, loss = build_pair_model(head), contrastive_loss(margin)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
    validation = ValidationCallback(head, val_items, lambda e: evaluate_embeddings(e, val_items, val_pairs)[0])
    stopper = keras.callbacks.EarlyStopping(monitor="val_top10", mode="max", patience=config.patience,
                                            restore_best_weights=True)
    history = model.fit(SamplerDataset(sampler, steps, config.seed), epochs=config.epochs, shuffle=False,
                        callbacks=[validation, stopper], verbose=1 if config.progress else 0)

    embedded = head.predict(val_items.vectors, batch_size=4096, verbose=0)
    trained, calibration = evaluate_embeddings(embedded, val_items, val_pairs)
    logs = {key: [float(v) for v in values] for key, values in history.history.items()}
    best_epoch = int(np.argmax(logs["val_top10"])) + 1

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    temp_model = out / ".model.part.keras"
    head.save(temp_model)
    os.replace(temp_model, out / "model.keras")
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(config).items()
                if key not in ("head", "progress")}
    _write_json(out / "config.json", {
        "format": HEAD_FORMAT, "head": asdict(config.head), "training": dict(settings, margin=margin),
        "vectors": vectors_identity,
        "data": {"mode": "products" if config.manifest else "labels", "manifest": settings["manifest"],
                 "train_items": len(train_items), "train_labels": int(len(np.unique(train_items.labels))),
                 "val_items": len(val_items), "val_labels": int(len(np.unique(val_items.labels))),
                 "val_queries": int(val_items.query.sum()), "val_gallery": int(val_items.gallery.sum())},
        "calibration": asdict(calibration), "raw_calibration": asdict(raw_calibration),
        "validation": {"raw": raw, "head": trained}, "best_epoch": best_epoch,
    })
    _write_json(out / "history.json", logs)
    plot_training(logs, raw, out / "training.png")
    return TrainResult(out, raw, trained, best_epoch, len(logs["loss"]))
