"""Train the Siamese head over cached vectors and write ``model.keras``, ``config.json``, ``history.json``
and ``training.png`` into one folder, as a whole.

One run at a time per output folder (``common.WriterLock``). After every epoch a checkpoint goes to
``<out>.partial/`` (see ``checkpoint``), so a killed run resumes from its last finished epoch; the
head folder appears, or is replaced, in one step when training ends, so a model is never paired with
another run's calibration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common import WriterLock, atomic_path, check_replaceable_folder

from ..extraction.cache import identity, read_info, read_vectors
from .head import Calibration, HeadConfig, build_head, build_pair_model
from .losses import check_loss, contrastive_loss, default_margin, triplet_loss
from .metrics import euclidean_distances, first_hit_rank, fit_calibration, pair_accuracy, topk_accuracy
from .samplers import ItemSet, PairSampler, TripletSampler, from_labels, from_manifest_cache, split_validation

logger = logging.getLogger(__name__)

HEAD_FORMAT = "street2shop-head/1"
HEAD_FILES = ("model.keras", "config.json", "history.json", "training.png")
RANK_BLOCK_BYTES = 64 << 20  # float64 distances of one block of validation queries against the gallery


@dataclass
class TrainConfig:
    """One training run. ``margin`` defaults to 0.2 (triplet) or 1.0 (contrastive) on unit-length embeddings.
    ``wait``: wait for another run writing ``out``; ``restart``: discard an interrupted run's checkpoint;
    ``strict_manifest``: a bad manifest line is an error instead of being skipped."""

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
    strict_manifest: bool = False
    wait: bool = False
    restart: bool = False

    def validate(self) -> None:
        check_loss(self.loss, self.mining)
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch size >= 2, got {self.epochs}, {self.batch_size}")
        if self.patience < 1 or self.learning_rate <= 0 or not 0 <= self.in_class <= 1:
            raise ValueError(f"need patience >= 1, learning rate > 0 and in-class share in [0, 1], got "
                             f"{self.patience}, {self.learning_rate}, {self.in_class}")
        if self.manifest is not None and not Path(self.manifest).is_file():
            raise FileNotFoundError(f"{self.manifest}: manifest does not exist")
        if not Path(self.vectors).is_file():
            raise FileNotFoundError(f"{self.vectors}: vector cache does not exist")
        check_replaceable_folder(self.out, HEAD_FILES, "head")
        self.head.validate()

    @property
    def effective_margin(self) -> float:
        return self.margin if self.margin is not None else default_margin(self.loss)


@dataclass
class TrainResult:
    """Validation figures of raw (L2-normalised) vectors and of the trained head, and where it went."""

    out: Path
    raw: dict[str, float]
    head: dict[str, float]
    best_epoch: int
    epochs_run: int


@dataclass
class _Data:
    """What a run learns from and is measured on."""

    items: ItemSet
    train: ItemSet
    val: ItemSet
    val_pairs: tuple[np.ndarray, np.ndarray]
    raw: dict[str, float]
    raw_calibration: Calibration
    vectors_identity: dict[str, Any]


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def validation_pairs(items: ItemSet, rng: np.random.Generator, limit: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Matching and as many non-matching (query, gallery) index pairs, half of the latter in-category."""
    sampler = PairSampler(items, batch_size=limit, negatives=1.0, in_class=0.5)
    anchors = sampler.queries[rng.integers(len(sampler.queries), size=limit)]
    positives = sampler.partners(anchors, rng, matching=True)
    negatives = sampler.partners(anchors, rng, matching=False)
    keep = positives != anchors  # a labelled folder: a pair of an item with itself says nothing
    return np.stack([anchors[keep], positives[keep]], 1), np.stack([anchors, negatives], 1)


def _first_hit_ranks(embedded: np.ndarray, items: ItemSet) -> np.ndarray:
    """Rank of each query's first match in the gallery, a block of queries at a time (``RANK_BLOCK_BYTES`` of
    float64 distances), so that memory does not grow with queries x gallery."""
    queries, gallery = np.flatnonzero(items.query), np.flatnonzero(items.gallery)
    step = max(1, RANK_BLOCK_BYTES // (8 * max(1, len(gallery))))
    ranks = [np.zeros(0, np.int64)]
    for start in range(0, len(queries), step):
        block = queries[start:start + step]
        distances = euclidean_distances(embedded[block], embedded[gallery])
        if items.same_sides:  # queries are the gallery: query i is gallery item i, not a match of itself
            distances[np.arange(len(block)), start + np.arange(len(block))] = np.inf
        ranks.append(first_hit_rank(distances, items.labels[block], items.labels[gallery], items.groups[block],
                                    items.groups[gallery]))
    return np.concatenate(ranks)


def evaluate_embeddings(embedded: np.ndarray, items: ItemSet, pairs: tuple[np.ndarray, np.ndarray],
                        calibration: Calibration | None = None) -> tuple[dict[str, float], Calibration]:
    """Top-1/top-10 retrieval (street queries against shop gallery, within category) and pair accuracy."""
    accuracy = topk_accuracy(_first_hit_ranks(embedded, items), (1, 10))
    positive = np.linalg.norm(embedded[pairs[0][:, 0]] - embedded[pairs[0][:, 1]], axis=1)
    negative = np.linalg.norm(embedded[pairs[1][:, 0]] - embedded[pairs[1][:, 1]], axis=1)
    calibration = calibration or fit_calibration(positive, negative)
    return {"top1": accuracy[1], "top10": accuracy[10],
            "pair_accuracy": pair_accuracy(positive, negative, calibration.threshold)}, calibration


def load_items(config: TrainConfig) -> tuple[ItemSet, dict[str, Any]]:
    """The items to learn from (from a manifest, only their rows are read) and the cache's identity."""
    if config.manifest is not None:
        items, attrs = from_manifest_cache(config.vectors, config.manifest, strict=config.strict_manifest)
    else:
        if not read_info(config.vectors).labelled:  # said before the whole cache is read
            raise ValueError(f"{config.vectors}: has no labels: build it from a folder with one sub-folder per "
                             f"class, or pass --manifest")
        vectors = read_vectors(config.vectors)
        items, attrs = from_labels(vectors), vectors.attrs
    return items, dict(identity(attrs), file=str(config.vectors))


def _prepare(config: TrainConfig) -> _Data:
    items, vectors_identity = load_items(config)
    train_items, val_items = split_validation(items, config.val_fraction, config.seed)
    val_pairs = validation_pairs(val_items, np.random.default_rng(config.seed))
    raw, raw_calibration = evaluate_embeddings(_normalise(val_items.vectors), val_items, val_pairs)
    logger.info("raw vectors: validation top-1 %.3f top-10 %.3f", raw["top1"], raw["top10"])
    return _Data(items, train_items, val_items, val_pairs, raw, raw_calibration, vectors_identity)


def _fingerprint(config: TrainConfig, data: _Data) -> dict[str, Any]:
    """What must not change for a checkpoint to be resumed: settings (but how long to train) and data."""
    settings = {key: value for key, value in asdict(config).items()
                if key not in ("out", "epochs", "patience", "progress", "wait", "restart", "strict_manifest")}
    digest = hashlib.sha256()
    for key, label in zip(data.train.ids, data.train.labels):
        digest.update(f"{key}\t{label}\n".encode())
    return json.loads(json.dumps(dict(settings, vectors_identity=data.vectors_identity,
                                      train_items=digest.hexdigest()[:16]), default=str))


def _fit(config: TrainConfig, data: _Data) -> tuple[Any, Any]:
    """Train (or go on training) the head; returns it with the best epoch's weights, and the run's state."""
    import keras

    from .checkpoint import EpochCheckpoint, load_state, partial_folder, restore
    from .feed import SamplerDataset, ValidationCallback

    folder = partial_folder(config.out)
    state = load_state(folder, _fingerprint(config, data), config.restart)
    head = build_head(data.items.vectors.shape[1], config.head)
    steps = config.steps_per_epoch or max(1, math.ceil(len(data.train) / config.batch_size))
    if config.loss == "triplet":
        sampler = TripletSampler(data.train, config.batch_size, config.per_class, config.in_class)
        model, loss = head, triplet_loss(config.effective_margin, config.mining)
    else:
        sampler = PairSampler(data.train, config.batch_size, config.negatives_per_positive, config.in_class)
        model, loss = build_pair_model(head), contrastive_loss(config.effective_margin)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
    if state.epochs_done:
        restore(folder, head, model)
    if state.epochs_done < config.epochs and not state.stopped:
        dataset = SamplerDataset(sampler, steps, config.seed)
        dataset.epoch = state.epochs_done  # batch i of epoch e is seeded by (seed, e, i), resumed or not
        validation = ValidationCallback(head, data.val, lambda e: evaluate_embeddings(e, data.val, data.val_pairs)[0])
        checkpoint = EpochCheckpoint(folder, state, head, monitor="val_top10", patience=config.patience)
        model.fit(dataset, epochs=config.epochs, initial_epoch=state.epochs_done, shuffle=False,
                  callbacks=[validation, checkpoint], verbose=1 if config.progress else 0)
    restore(folder, head, model, best=True)
    return head, state


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=float), encoding="utf-8")


def _publish(config: TrainConfig, data: _Data, head: Any, state: Any) -> TrainResult:
    """Measure the kept head and write the head folder as a whole; then drop the checkpoint."""
    from .checkpoint import partial_folder
    from .plots import plot_training

    embedded = head.predict(data.val.vectors, batch_size=4096, verbose=0)
    trained, calibration = evaluate_embeddings(embedded, data.val, data.val_pairs)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(config).items()
                if key not in ("head", "progress", "wait", "restart")}
    out = Path(config.out)
    with atomic_path(out) as staging:
        staging.mkdir(parents=True)
        head.save(staging / "model.keras")
        _write_json(staging / "config.json", {
            "format": HEAD_FORMAT, "head": asdict(config.head),
            "training": dict(settings, margin=config.effective_margin), "vectors": data.vectors_identity,
            "data": {"mode": "products" if config.manifest else "labels", "manifest": settings["manifest"],
                     "train_items": len(data.train), "train_labels": int(len(np.unique(data.train.labels))),
                     "val_items": len(data.val), "val_labels": int(len(np.unique(data.val.labels))),
                     "val_queries": int(data.val.query.sum()), "val_gallery": int(data.val.gallery.sum())},
            "calibration": asdict(calibration), "raw_calibration": asdict(data.raw_calibration),
            "validation": {"raw": data.raw, "head": trained}, "best_epoch": state.best_epoch,
        })
        _write_json(staging / "history.json", state.history)
        plot_training(state.history, data.raw, staging / "training.png")
    shutil.rmtree(partial_folder(out), ignore_errors=True)
    return TrainResult(out, data.raw, trained, state.best_epoch, state.epochs_done)


def train(config: TrainConfig) -> TrainResult:
    """Train a head, resuming an interrupted run of the same settings; the best epoch by validation top-10
    accuracy is kept (early stopping after ``patience`` epochs without a better one).

    Raises:
        FileNotFoundError, ValueError, CacheError: bad inputs, named.
        common.LockHeld: another run is writing ``out`` (and not ``wait``).
    """
    config.validate()
    with WriterLock(config.out, wait=config.wait):
        data = _prepare(config)
        head, state = _fit(config, data)
        return _publish(config, data, head, state)
