"""Train a tower end to end on pixels (``python -m embeddings.finetune``) and write ``model.keras``,
``config.json``, ``history.json`` and ``training.png`` into one folder, written whole at the end.

The losses, batch samplers, validation figures and calibration are the head's (``embeddings.train``);
here the samplers pick images instead of cached vectors. One run at a time per output folder
(``common.WriterLock``); after every epoch the state is checkpointed in ``<out>.partial/`` (``checkpoint``,
as for the head), so a killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common import WriterLock, atomic_path, check_replaceable_folder

from .fit import HEAD_FILES, evaluate_embeddings, validation_pairs
from .losses import check_loss, contrastive_loss, default_margin, triplet_loss
from .pixel_data import PixelSplits, fashion_mnist_splits, folder_splits, limit_items, manifest_splits
from .pixels import PixelBatches, PixelEmbedder, embed_pixels, raw_pixels
from .samplers import ItemSet, PairSampler, TripletSampler
from .tower import TOWER_FORMAT, TowerConfig, build_image_pair_model, build_tower, tower_settings

logger = logging.getLogger(__name__)

KERAS_DATASET = "keras.datasets"  # ``fashion_mnist`` value: download through keras.datasets.fashion_mnist
TOWER_FILES = HEAD_FILES  # a tower's run folder holds the same files as a head's


@dataclass
class FinetuneConfig:
    """One run: exactly one source (``manifest``, ``images`` folder, or ``fashion_mnist`` folder or
    ``KERAS_DATASET``). ``learning_rate`` defaults to 1e-3 from scratch (small-cnn), 1e-4 fine-tuning;
    ``margin`` to 0.2 (triplet) or 1.0 (contrastive); ``eval_limit`` caps validation and test items.
    ``wait``: wait for another run writing ``out``; ``restart``: discard an interrupted run's checkpoint."""

    out: Path
    manifest: Path | None = None
    images: Path | None = None
    fashion_mnist: str | Path | None = None
    tower: TowerConfig = field(default_factory=TowerConfig)
    loss: Literal["triplet", "contrastive"] = "triplet"
    mining: str = "semi-hard"
    margin: float | None = None
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float | None = None
    per_class: int = 4
    negatives_per_positive: float = 1.0
    in_class: float = 0.5
    val_fraction: float = 0.15
    patience: int = 5
    steps_per_epoch: int | None = None
    eval_limit: int = 2000
    seed: int = 0
    progress: bool = False
    wait: bool = False
    restart: bool = False

    def validate(self) -> None:
        sources = [s for s in (self.manifest, self.images, self.fashion_mnist) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of manifest, images or fashion_mnist")
        if self.manifest is not None and not Path(self.manifest).is_file():
            raise FileNotFoundError(f"{self.manifest}: manifest does not exist")
        check_loss(self.loss, self.mining)
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1 or self.eval_limit < 10:
            raise ValueError(f"need epochs, patience >= 1, batch size >= 2 and eval limit >= 10, got "
                             f"{self.epochs}, {self.patience}, {self.batch_size}, {self.eval_limit}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")
        if self.margin is not None and not self.margin > 0:
            raise ValueError(f"margin must be positive, got {self.margin}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps per epoch must be at least 1, got {self.steps_per_epoch}")
        check_replaceable_folder(self.out, TOWER_FILES, "tower")
        self.tower.validate()

    @property
    def effective_margin(self) -> float:
        return self.margin if self.margin is not None else default_margin(self.loss)

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.tower.fraction == 1 and self.tower.weights is None else 1e-4

    def settings(self) -> dict[str, Any]:
        """What the run is (JSON values): recorded in ``config.json``; a resumed run must match it."""
        settings = {
            "source": {"manifest": self.manifest, "images": self.images, "fashion_mnist": self.fashion_mnist},
            "tower": tower_settings(self.tower),
            "training": {"loss": self.loss, "mining": self.mining, "margin": self.effective_margin,
                         "batch_size": self.batch_size, "learning_rate": self.effective_learning_rate,
                         "per_class": self.per_class, "negatives_per_positive": self.negatives_per_positive,
                         "in_class": self.in_class, "val_fraction": self.val_fraction,
                         "steps_per_epoch": self.steps_per_epoch, "eval_limit": self.eval_limit, "seed": self.seed},
        }
        return json.loads(json.dumps(settings, default=str))


@dataclass
class FinetuneResult:
    """Validation figures of raw pixels and of the trained tower, test figures (None without a test split)."""

    out: Path
    raw: dict[str, float]
    val: dict[str, float]
    test: dict[str, float] | None
    best_epoch: int
    epochs_run: int


def load_splits(config: FinetuneConfig) -> PixelSplits:
    """Training, validation and test items from the configured source, at the tower's input size."""
    size, fraction, seed = config.tower.size, config.val_fraction, config.seed
    if config.manifest is not None:
        return manifest_splits(config.manifest, size, fraction, seed)
    if config.images is not None:
        return folder_splits(config.images, size, fraction, seed)
    folder = None if str(config.fashion_mnist) == KERAS_DATASET else config.fashion_mnist
    return fashion_mnist_splits(folder, size, fraction, seed)


def _decoded(items: ItemSet) -> ItemSet:
    """The same items with their images decoded once (validation runs every epoch)."""
    return ItemSet(np.asarray(items.vectors), items.labels, items.groups, items.query, items.gallery, items.ids)


def _trainer(config: FinetuneConfig, tower: Any, train: ItemSet) -> tuple[Any, Any, Any]:
    """The model to fit (the tower, or a pair of it), its loss, and the batch sampler."""
    margin = config.effective_margin
    if config.loss == "triplet":
        return tower, triplet_loss(margin, config.mining), TripletSampler(
            train, config.batch_size, config.per_class, config.in_class)
    return build_image_pair_model(tower), contrastive_loss(margin), PairSampler(
        train, config.batch_size, config.negatives_per_positive, config.in_class)


def _fingerprint(config: FinetuneConfig, train: ItemSet) -> dict[str, Any]:
    """What must not change for a checkpoint to be resumed: the settings and the training items."""
    digest = hashlib.sha256()
    for key, label in zip(train.ids, train.labels):
        digest.update(f"{key}\t{label}\n".encode())
    return dict(config.settings(), train_items=digest.hexdigest()[:16])


def _fit(config: FinetuneConfig, tower: Any, train: ItemSet, val: ItemSet, val_pairs: Any) -> Any:
    """Train (or go on training) the tower, checkpointing every epoch; returns the run's state with the
    best epoch's weights loaded into ``tower``."""
    import keras

    from .checkpoint import EpochCheckpoint, load_state, partial_folder, restore
    from .feed import SamplerDataset, ValidationCallback

    folder = partial_folder(config.out)
    state = load_state(folder, _fingerprint(config, train), config.restart)
    model, loss, sampler = _trainer(config, tower, train)
    model.compile(optimizer=keras.optimizers.Adam(config.effective_learning_rate), loss=loss)
    if state.epochs_done:
        restore(folder, tower, model)
    if state.epochs_done < config.epochs and not state.stopped:
        steps = config.steps_per_epoch or max(1, math.ceil(len(train) / config.batch_size))
        dataset = SamplerDataset(PixelBatches(sampler), steps, config.seed)
        dataset.epoch = state.epochs_done  # batch i of epoch e is seeded by (seed, e, i), resumed or not
        validation = ValidationCallback(PixelEmbedder(tower), val, lambda e: evaluate_embeddings(e, val, val_pairs)[0])
        checkpoint = EpochCheckpoint(folder, state, tower, monitor="val_top10", patience=config.patience)
        model.fit(dataset, epochs=config.epochs, initial_epoch=state.epochs_done, shuffle=False,
                  callbacks=[validation, checkpoint], verbose=1 if config.progress else 0)
    restore(folder, tower, model, best=True)
    return state


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train the tower, resuming an interrupted run of the same settings; the best epoch by validation
    top-10 is kept (early stopping after ``patience`` epochs without a better one).

    Raises:
        FileNotFoundError, ValueError: bad inputs, named (``IdxError``, ``ManifestError`` are ValueErrors).
        common.LockHeld: another run is writing ``out`` (and not ``wait``).
    """
    config.validate()
    from .checkpoint import partial_folder

    out = Path(config.out)
    with WriterLock(out, wait=config.wait):
        splits = load_splits(config)
        _check_pairs(splits.val, "validation", config, required=True)
        if splits.test is not None and not _check_pairs(splits.test, "test", config, required=False):
            splits.test = None
        val = _decoded(limit_items(splits.val, config.eval_limit, config.seed))
        val_pairs = validation_pairs(val, np.random.default_rng(config.seed))
        raw, _ = evaluate_embeddings(raw_pixels(val.vectors), val, val_pairs)
        logger.info("raw pixels: validation top-1 %.3f top-10 %.3f", raw["top1"], raw["top10"])
        tower = build_tower(config.tower)
        state = _fit(config, tower, splits.train, val, val_pairs)
        figures, calibration = evaluate_embeddings(embed_pixels(tower, val.vectors), val, val_pairs)
        test = None
        if splits.test is not None:
            held = _decoded(limit_items(splits.test, config.eval_limit, config.seed))
            pairs = validation_pairs(held, np.random.default_rng(config.seed + 1))
            test, _ = evaluate_embeddings(embed_pixels(tower, held.vectors), held, pairs, calibration)
        settings = config.settings()
        steps = config.steps_per_epoch or max(1, math.ceil(len(splits.train) / config.batch_size))
        report = {"format": TOWER_FORMAT, **settings, "calibration": calibration.__dict__,
                  "training": dict(settings["training"], epochs=config.epochs, patience=config.patience),
                  "data": dict(splits.source, train_items=len(splits.train), val_items=len(splits.val),
                               test_items=len(splits.test) if splits.test is not None else 0,
                               evaluated_val_items=len(val), images_per_epoch=steps * _images_per_step(config)),
                  "validation": {"raw": raw, "tower": figures}, "test": test, "best_epoch": state.best_epoch}
        _write_run(out, tower, report, state.history, raw)
        shutil.rmtree(partial_folder(out), ignore_errors=True)
    return FinetuneResult(out, raw, figures, test, state.best_epoch, state.epochs_done)


def _check_pairs(items: ItemSet, name: str, config: FinetuneConfig, required: bool) -> bool:
    """Whether ``items`` hold a matching pair (two images of a class) and a non-matching one, to measure
    retrieval and pair accuracy on; a validation split without them is an error, a test split is skipped."""
    labels, counts = np.unique(items.labels, return_counts=True)
    if len(labels) >= 2 and counts.max() >= 2:
        return True
    source = config.manifest or config.images or config.fashion_mnist
    why = (f"{source}: the {name} split has {len(items)} images of {len(labels)} classes, no two of one class "
           f"and another")
    if required:
        raise ValueError(f"{why}: nothing to measure; add images or raise --val-fraction")
    logger.warning("%s: no test figures", why)
    return False


def _images_per_step(config: FinetuneConfig) -> int:
    if config.loss == "triplet":
        return (config.batch_size // config.per_class) * config.per_class
    return 2 * config.batch_size


def _write_run(out: Path, tower: Any, report: dict[str, Any], history: dict[str, list[float]],
               raw: dict[str, float]) -> None:
    """The run folder, whole: readers see the previous run or this one."""
    from .plots import plot_training

    with atomic_path(out) as temp:
        temp.mkdir(parents=True)
        tower.save(temp / "model.keras")
        (temp / "config.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=float))
        (temp / "history.json").write_text(json.dumps(history, indent=2, sort_keys=True, default=float))
        plot_training(history, raw, temp / "training.png")
