"""An ``Extractor`` that embeds with a trained tower (``embeddings.build --model DIR``, and queries against
an index built from its vectors): the same decoding and batching as a backbone, the tower as the network."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ..extraction.backbones import Backbone
from ..extraction.extractor import Extractor
from ..extraction.preprocess import DEFAULT_DECODE, check_decode
from .tower import Tower, load_tower


class TowerExtractor(Extractor):
    """``TowerExtractor("tower/")`` (the folder or its ``model.keras``): vectors are the tower's unit-length
    embeddings; ``describe()`` is the tower's identity (its file hash as the weights), so caches, indexes and
    queries made with another tower, or with a backbone, are refused. Always float32."""

    def __init__(self, tower: str | Path | Tower, batch_size: int = 32, workers: int | None = None,
                 prefetch: int = 2, decode: str = DEFAULT_DECODE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not isinstance(tower, Tower):
            folder = Path(tower)
            tower = load_tower(folder.parent if folder.name == "model.keras" else folder)
        self.tower = tower
        self.spec = Backbone(tower.identity["backbone"], "", "", "embedding", tower.dim, tower.input_size)
        self.decode = check_decode(decode)
        self.precision = "float32"
        self.weights = str(Path(tower.path) / "model.keras")
        self.weights_id = tower.identity["weights"]
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 2
        self.prefetch = max(1, prefetch)
        self.model = tower.model
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """The tower's identity; ``weights_file`` (its ``model.keras``) is where queries find it again."""
        return dict(self.tower.identity, decode=self.decode, precision=self.precision,
                    weights_file=str((Path(self.tower.path) / "model.keras").resolve()))


def extractor_for_build(model: str | Path, config: Any) -> TowerExtractor:
    """The extractor ``embeddings.build --model`` uses for a ``BuildConfig``: the local engine, float32.

    Raises:
        ValueError: another engine or precision asked for; FileNotFoundError/ValueError: not a tower folder.
    """
    if config.engine != "local":
        raise ValueError(f"--model runs on the local engine only, got --engine {config.engine}")
    if config.precision != "float32":
        raise ValueError(f"--model computes in float32, got --precision {config.precision}")
    return TowerExtractor(model, config.batch_size, config.workers, decode=config.decode)
