"""What happens after each epoch of a tower run: time it, measure validation, keep the best weights,
stop early, and checkpoint (Keras glue, beside ``feed.py``'s for the head)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from .pixels import embed_pixels
from .samplers import ItemSet
from .tower_checkpoint import EpochState, save_checkpoint


class EpochMonitor(keras.callbacks.Callback):
    """Adds ``seconds`` and ``val_<metric>`` to the history in ``state``; keeps the weights of the best
    epoch by validation top-10; stops after ``patience`` epochs without one; checkpoints to ``folder``."""

    def __init__(self, tower: Any, items: ItemSet, measure: Callable[[np.ndarray], dict[str, float]],
                 state: EpochState, best: list[np.ndarray], folder: Path, optimizer: Any, patience: int) -> None:
        super().__init__()
        self.tower, self.items, self.measure = tower, items, measure
        self.state, self.best, self.folder = state, best, folder
        self.optimizer, self.patience = optimizer, patience

    def finished(self, epochs: int) -> bool:
        """True when a resumed run had already run its epochs or stopped early."""
        done = self.state.epochs
        return done >= epochs or (done > 0 and done - self.state.best_epoch >= self.patience)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._start  # training of this epoch, before validation
        figures = self.measure(embed_pixels(self.tower, self.items.vectors))
        row = {"loss": float((logs or {}).get("loss", float("nan"))), "seconds": seconds}
        row.update({f"val_{key}": float(value) for key, value in figures.items()})
        for key, value in row.items():
            self.state.history.setdefault(key, []).append(value)
        self.state.epochs = epoch + 1
        if figures["top10"] > self.state.best_score:
            self.state.best_score, self.state.best_epoch = float(figures["top10"]), epoch + 1
            self.best = self.tower.get_weights()
        save_checkpoint(self.folder, self.state, self.tower, self.optimizer, self.best)
        if self.state.epochs - self.state.best_epoch >= self.patience:
            self.model.stop_training = True
