"""One row per training run folder (``embeddings.train``'s head or ``embeddings.finetune``'s tower), read
from its ``config.json`` and ``history.json``, and a Markdown table of them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = ("run", "backbone", "trainable", "augment", "dropout", "loss", "margin", "dim", "epochs",
           "best_val_pair_accuracy", "top1", "top10")
NUMERIC = {"trainable", "dropout", "margin", "dim", "epochs", "best_val_pair_accuracy", "top1", "top10"}
HEADERS = {"run": "run", "backbone": "backbone", "trainable": "trainable", "augment": "augment", "dropout": "dropout",
           "loss": "loss (mining)", "margin": "margin", "dim": "dim", "epochs": "epochs run",
           "best_val_pair_accuracy": "best val pair acc.", "top1": "val top-1", "top10": "val top-10"}


class NotARunError(ValueError):
    """A folder that is not a finished run of ``embeddings.train`` or ``embeddings.finetune``."""


def _loss(training: dict[str, Any]) -> str:
    loss = training.get("loss", "?")
    return f"{loss} ({training.get('mining', '?')})" if loss == "triplet" else str(loss)


def read_run(folder: str | Path) -> dict[str, Any]:
    """The table's values for one run folder.

    Raises:
        NotARunError: no readable ``config.json``/``history.json`` of either command, naming the folder.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError) as error:
        why = "missing config.json or history.json" if isinstance(error, OSError) else f"unreadable JSON ({error})"
        raise NotARunError(f"{folder}: not a run folder of embeddings.train or embeddings.finetune ({why})") from None
    if not isinstance(config, dict) or not isinstance(history, dict) or "training" not in config:
        raise NotARunError(f"{folder}: not a run folder of embeddings.train or embeddings.finetune "
                           f"(no training settings)")
    try:
        row = _values(config, history)
    except (AttributeError, TypeError, ValueError, KeyError) as error:
        raise NotARunError(f"{folder}: not a run folder of embeddings.train or embeddings.finetune "
                           f"(unexpected content: {error})") from None
    bad = [column for column in NUMERIC if row[column] is not None
           and (isinstance(row[column], bool) or not isinstance(row[column], (int, float)))]
    if bad:
        raise NotARunError(f"{folder}: not a run folder of embeddings.train or embeddings.finetune "
                           f"({', '.join(sorted(bad))} not a number)")
    return dict(row, run=str(folder))


def _values(config: dict[str, Any], history: dict[str, Any]) -> dict[str, Any]:
    """The row's values from a run's ``config.json`` and ``history.json`` (TypeError etc. on other shapes)."""
    training = config["training"]
    if "tower" in config:  # embeddings.finetune
        tower = config["tower"]
        backbone, trainable, augment = tower.get("backbone"), tower.get("trainable"), tower.get("augment")
        head = tower.get("head", {})
    else:  # embeddings.train: a head over frozen vectors
        backbone, trainable, augment = (config.get("vectors") or {}).get("backbone"), 0.0, False
        head = config.get("head", {})
    epochs = len(list(history.get("loss", [])))
    top10 = list(history.get("val_top10", []))
    best = max(range(len(top10)), key=lambda i: (float(top10[i]), -i)) if top10 else None

    def pick(key: str) -> float | None:
        values = list(history.get(key, []))
        return values[best] if best is not None and len(values) > best else None

    pair = [float(v) for v in history.get("val_pair_accuracy", [])]
    return {"backbone": backbone, "trainable": trainable,
            "augment": "yes" if augment else "no", "dropout": head.get("dropout"), "loss": _loss(training),
            "margin": training.get("margin"), "dim": head.get("dim"), "epochs": epochs,
            "best_val_pair_accuracy": max(pair) if pair else None, "top1": pick("val_top1"), "top10": pick("val_top10")}


def sort_rows(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Numbers best (largest) first, text in order; missing values last.

    Raises:
        ValueError: an unknown column, listing the known ones.
    """
    if column not in COLUMNS:
        raise ValueError(f"unknown column {column!r}; expected one of {list(COLUMNS)}")
    present = [row for row in rows if row.get(column) is not None]
    missing = [row for row in rows if row.get(column) is None]
    if column in NUMERIC:
        return sorted(present, key=lambda row: -float(row[column])) + missing
    return sorted(present, key=lambda row: str(row[column])) + missing


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in ("best_val_pair_accuracy", "top1", "top10"):
        return f"{float(value):.3f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table with a column per ``COLUMNS`` entry."""
    lines = ["| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c, row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
