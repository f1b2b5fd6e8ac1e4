"""The state of an unfinished tower run after each epoch, so that a killed run resumes from its last
finished epoch: weights, optimizer slots, the best epoch's weights, history and settings.

It is a folder beside the output (``.OUT.checkpoint``), replaced as a whole after each epoch
(``common.atomic_path``), so a kill at any moment leaves the previous epoch's state or the new one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from common import atomic_path


@dataclass
class EpochState:
    """Where training stands: ``epochs`` finished, per-epoch ``history``, the best epoch and its figures."""

    settings: dict[str, Any]
    epochs: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    best_score: float = -1.0


def checkpoint_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.checkpoint")


def _write_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    with h5py.File(path, "w") as handle:
        for index, array in enumerate(arrays):
            handle.create_dataset(str(index), data=np.asarray(array))


def _read_arrays(path: Path) -> list[np.ndarray]:
    with h5py.File(path, "r") as handle:
        return [handle[str(index)][()] for index in range(len(handle))]


def save_checkpoint(folder: Path, state: EpochState, model: Any, optimizer: Any, best: list[np.ndarray]) -> None:
    """Replace ``folder`` with this epoch's state (the model's weights, the optimizer's variables, ``best``)."""
    with atomic_path(folder) as temp:
        temp.mkdir()
        _write_arrays(temp / "weights.h5", model.get_weights())
        _write_arrays(temp / "optimizer.h5", [variable.numpy() for variable in optimizer.variables])
        _write_arrays(temp / "best.h5", best)
        (temp / "state.json").write_text(json.dumps(state.__dict__, indent=1, sort_keys=True, default=float))


def load_checkpoint(folder: Path, settings: dict[str, Any], model: Any,
                    optimizer: Any) -> tuple[EpochState, list[np.ndarray]] | None:
    """Restore ``model`` and ``optimizer`` from ``folder`` if there is one; the best weights come back.

    Raises:
        ValueError: the checkpoint was made with other settings (it names them), or does not fit the model.
    """
    if not (folder / "state.json").is_file():
        return None
    state = EpochState(**json.loads((folder / "state.json").read_text()))
    changed = [f"{key}: {state.settings.get(key)!r} then, {value!r} now" for key, value in settings.items()
               if state.settings.get(key) != value]
    if changed:
        raise ValueError(f"{folder}: an unfinished run with other settings ({'; '.join(changed)}); rerun with "
                         f"the same settings to resume it, or delete the folder to start over")
    weights, slots = _read_arrays(folder / "weights.h5"), _read_arrays(folder / "optimizer.h5")
    optimizer.build(model.trainable_variables)
    if len(slots) != len(optimizer.variables) or len(weights) != len(model.get_weights()):
        raise ValueError(f"{folder}: the checkpoint does not fit this model; delete it to start over")
    model.set_weights(weights)
    for variable, value in zip(optimizer.variables, slots):
        variable.assign(value)
    return state, _read_arrays(folder / "best.h5")


def remove_checkpoint(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
