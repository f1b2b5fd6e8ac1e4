"""Distributor: where the work of a build runs. ``local``: decoding processes and the network on this
machine; ``ray``: a Ray cluster (``ray_engine``, imported only when asked for).

Each engine says what its vectors are (``describe``, checked against the cache before any work) and
turns ``(id, image file)`` pairs into batches of vectors and failures, in any order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Protocol

from .extractor import Batch, Extractor

EngineName = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")


class Engine(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def batches(self, items: Iterable[tuple[str, Path]]) -> Iterator[Batch]: ...

    def close(self) -> None: ...


class LocalEngine:
    """This machine: an ``Extractor`` whose batches decode in worker processes."""

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor

    def describe(self) -> dict[str, Any]:
        return self.extractor.describe()

    def batches(self, items: Iterable[tuple[str, Path]]) -> Iterator[Batch]:
        return self.extractor.batches(items)

    def close(self) -> None:
        pass


def open_engine(config: Any, extractor: Extractor | None = None) -> Engine:
    """The engine ``config.engine`` names (a ``BuildConfig``); ``extractor`` is used by the local one."""
    if config.engine == "ray":
        try:
            from .ray_engine import RayEngine  # Ray only on this path
        except ImportError as error:
            raise ValueError(f"the ray engine needs Ray ({error}): pip install -e '.[ray]'") from None

        return RayEngine(config)
    extractor = extractor or Extractor(config.backbone, config.weights, config.batch_size, config.workers,
                                       decode=config.decode, precision=config.precision)
    return LocalEngine(extractor)
