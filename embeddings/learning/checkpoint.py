"""Resume training from its last finished epoch.

After every epoch the folder ``<out>.partial/checkpoint`` is rewritten as a whole (``common.atomic_path``):
the model's weights, the optimizer's state, the best epoch's weights, and ``state.json`` (epochs done,
the history so far, early-stopping state, and the fingerprint of the settings and data). A rerun of
the same command continues from there; a run with other settings is refused until ``restart``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from common import atomic_path

logger = logging.getLogger(__name__)

STATE, ARRAYS = "state.json", "arrays.h5"  # arrays: groups "weights", "best" (the best epoch's), "optimizer"


@dataclass
class TrainingState:
    """Where a run stands: ``history`` of the finished epochs, the best one (1-based) and early stopping."""

    fingerprint: dict[str, Any]
    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False


def partial_folder(out: str | Path) -> Path:
    """Where an unfinished run of ``out`` keeps its checkpoint."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def load_state(folder: Path, fingerprint: dict[str, Any], restart: bool = False) -> TrainingState:
    """The state saved in ``folder`` for a run with this ``fingerprint``, or a fresh one.

    Raises:
        ValueError: ``folder`` holds a run with other settings or data (and not ``restart``), or is a file.
    """
    if folder.exists() and not folder.is_dir():
        out = folder.with_name(folder.name[:-len(".partial")])
        raise ValueError(f"{folder}: exists and is not a folder (where {out} keeps its checkpoint); "
                         f"move it away or choose another --out")
    if restart and folder.exists():
        logger.warning("%s: discarding the interrupted run (restart)", folder)
        shutil.rmtree(folder)
    path = folder / "checkpoint" / STATE
    if not path.is_file():
        return TrainingState(fingerprint)
    try:
        state = TrainingState(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: unreadable checkpoint ({error}); pass --restart to discard it") from None
    if state.fingerprint != fingerprint:
        keys = sorted(k for k in set(state.fingerprint) | set(fingerprint)
                      if state.fingerprint.get(k) != fingerprint.get(k))
        differences = "; ".join(f"{k}: {state.fingerprint.get(k)!r} then, {fingerprint.get(k)!r} now" for k in keys)
        raise ValueError(f"{folder}: holds an interrupted run with other settings or data ({differences}); "
                         f"pass --restart to discard it, or choose another --out")
    logger.warning("%s: resuming after epoch %d", folder, state.epochs_done)
    return state


def _read_group(handle: h5py.File, name: str, count: int) -> list[np.ndarray]:
    group = handle[name]
    if len(group) != count:
        raise ValueError(f"{handle.filename}: {len(group)} saved {name} arrays, expected {count}; "
                         f"pass --restart to discard this checkpoint")
    return [group[str(i)][()] for i in range(count)]


def restore(folder: Path, weights_model: Any, model: Any, best: bool = False) -> None:
    """Load the checkpoint's weights (the best epoch's with ``best``) and, unless ``best``, the optimizer's state."""
    with h5py.File(folder / "checkpoint" / ARRAYS, "r") as handle:
        weights_model.set_weights(_read_group(handle, "best" if best else "weights", len(weights_model.weights)))
        if best:
            return
        optimizer = model.optimizer
        optimizer.build(model.trainable_variables)
        for variable, value in zip(optimizer.variables, _read_group(handle, "optimizer", len(optimizer.variables))):
            variable.assign(value)


def _best_weights(folder: Path) -> list[np.ndarray] | None:
    path = folder / "checkpoint" / ARRAYS
    if not path.is_file():
        return None
    with h5py.File(path, "r") as handle:
        return [handle["best"][str(i)][()] for i in range(len(handle["best"]))]


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: record its logs, track the best ``monitor`` (higher is better) and early stopping,
    and rewrite the checkpoint folder whole. Runs after the callback that adds the validation figures."""

    def __init__(self, folder: Path, state: TrainingState, weights_model: Any, monitor: str, patience: int) -> None:
        super().__init__()
        self.folder, self.state, self.weights_model = folder, state, weights_model
        self.monitor, self.patience = monitor, patience
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        state = self.state
        for key, value in logs.items():
            state.history.setdefault(key, []).append(float(value))
        value = float(logs[self.monitor])
        improved = state.best is None or value > state.best
        state.wait += 1
        if improved:
            state.best, state.best_epoch, state.wait = value, epoch + 1, 0
        state.epochs_done = epoch + 1
        if state.wait >= self.patience:
            state.stopped = True
            self.model.stop_training = True
        self._save(improved)

    def _save(self, improved: bool) -> None:
        if improved or self.best_weights is None:
            self.best_weights = self.weights_model.get_weights() if improved else _best_weights(self.folder)
        arrays = {"weights": self.weights_model.get_weights(), "best": self.best_weights,
                  "optimizer": [np.asarray(variable.numpy()) for variable in self.model.optimizer.variables]}
        with atomic_path(self.folder / "checkpoint") as temp:
            temp.mkdir(parents=True)
            with h5py.File(temp / ARRAYS, "w") as handle:
                for name, values in arrays.items():
                    group = handle.create_group(name)
                    for index, value in enumerate(values):
                        group[str(index)] = value
            (temp / STATE).write_text(json.dumps(asdict(self.state), indent=1, default=float), encoding="utf-8")
