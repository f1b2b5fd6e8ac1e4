"""Keras glue for training: a ``PyDataset`` over a sampler, and a callback that adds validation accuracy."""

from __future__ import annotations

from typing import Any, Callable

import time

import keras
import numpy as np


class SamplerDataset(keras.utils.PyDataset):
    """``steps`` batches an epoch from ``sampler.batch(rng)``; batch ``i`` of epoch ``e`` is seeded by
    ``(seed, e, i)``, so runs repeat exactly."""

    def __init__(self, sampler: Any, steps: int, seed: int) -> None:
        super().__init__()
        self.sampler, self.steps, self.seed, self.epoch = sampler, steps, seed, 0

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.sampler.batch(np.random.default_rng((self.seed, self.epoch, index)))

    def on_epoch_end(self) -> None:
        self.epoch += 1


class ValidationCallback(keras.callbacks.Callback):
    """After each epoch, embed the validation vectors and add ``val_<metric>`` (and the epoch's ``seconds``) to the logs."""

    def __init__(self, head: Any, items: Any, measure: Callable[[np.ndarray], dict[str, float]]) -> None:
        super().__init__()
        self.head, self.items, self.measure = head, items, measure

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start  # training of this epoch, before validation
        embedded = self.head.predict(self.items.vectors, batch_size=4096, verbose=0)
        for key, value in self.measure(embedded).items():
            if logs is not None:
                logs[f"val_{key}"] = value
