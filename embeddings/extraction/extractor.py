"""Worker: turn images into backbone vectors; batches decode in worker processes while the network runs."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from downloader.metadata import BBox

from .backbones import Backbone, build_model, get_backbone, weights_id
from .decoding import DecodePool
from .precision import choose_precision
from .preprocess import DEFAULT_DECODE, ImageSource, check_decode, load_pixels

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Vectors for the readable images of one batch, and why the others were skipped."""

    ids: list[str]
    vectors: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def identity(spec: Backbone, weights: str | Path | None, dim: int, decode: str, precision: str) -> dict[str, Any]:
    """What makes vectors comparable, recorded in caches and indexes (``precision`` already resolved)."""
    described: dict[str, Any] = {"backbone": spec.name, "layer": spec.layer, "weights": weights_id(weights),
                                 "input_size": list(spec.input_size), "dim": dim, "decode": decode,
                                 "precision": precision}
    if weights is not None and weights != "imagenet" and str(weights).lower() != "none":
        described["weights_file"] = str(Path(weights).resolve())  # a hint for queries; not identity
    return described


class Extractor:
    """A backbone cut below its classifier: ``Extractor("vgg19", weights="imagenet")``.

    Args:
        backbone: ``vgg19`` (fc2, 4096-d, default), ``vgg16``, ``resnet50``, ``mobilenet_v2`` or a spec.
        weights: ``"imagenet"``, a local weights file, or ``None`` for seeded random weights.
        batch_size: images per network call.
        workers: decoding processes (default: CPU count).
        prefetch: batches decoded ahead of the network.
        decode: ``exact`` or ``fast`` (reduced-scale JPEG decoding; see ``preprocess``).
        precision: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (bfloat16 where the hardware has it).
    """

    def __init__(self, backbone: str | Backbone = "vgg19", weights: str | Path | None = "imagenet",
                 batch_size: int = 32, workers: int | None = None, prefetch: int = 2,
                 decode: str = DEFAULT_DECODE, precision: str = "float32") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.spec = get_backbone(backbone)
        self.decode = check_decode(decode)
        self.precision = choose_precision(precision)
        self.weights = weights
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 2
        self.prefetch = max(1, prefetch)
        self.model = build_model(self.spec, weights, self.precision)
        self.weights_id = weights_id(weights)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.output.shape[-1])

    def describe(self) -> dict[str, object]:
        """What makes these vectors comparable: recorded in caches and indexes."""
        return identity(self.spec, self.weights, self.dim, self.decode, self.precision)

    def prepare(self, source: ImageSource, bbox: BBox | None = None) -> np.ndarray:
        """The network's ``uint8`` pixels for one image (the shared preprocessing; the rest is in the model)."""
        return load_pixels(source, self.spec.input_size, self.decode, bbox)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Run the network on a ``uint8`` batch (N x H x W x 3); float32 vectors. Safe from several threads."""
        with self._lock:
            return np.asarray(self.model.predict_on_batch(np.asarray(pixels, np.uint8)), dtype=np.float32)

    def embed(self, sources: Sequence[ImageSource], bboxes: Sequence[BBox | None] | None = None) -> np.ndarray:
        """Vectors for a few images, in order, decoded in this process; any unreadable image raises.

        Raises:
            FileNotFoundError, downloader.ImageError: naming the image.
        """
        bboxes = list(bboxes) if bboxes is not None else [None] * len(sources)
        if not sources:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = np.stack([self.prepare(s, b) for s, b in zip(sources, bboxes)])
        return np.concatenate([self.predict(pixels[i:i + self.batch_size])
                               for i in range(0, len(pixels), self.batch_size)])

    def batches(self, items: Iterable[tuple[str, str | Path]]) -> Iterator[Batch]:
        """Vectors for ``(id, image file)`` pairs, batch by batch, in order; unreadable images are reported
        in ``Batch.failures`` and skipped. The next ``prefetch`` batches decode in worker processes while
        the network runs (they import the main module: a script calling this needs the usual
        ``if __name__ == "__main__":`` guard)."""
        pool = DecodePool(self.spec.input_size, self.decode, self.workers, self.batch_size, self.prefetch)
        with pool:
            for decoded in pool.batches(items):
                vectors = self.predict(decoded.pixels) if decoded.ids else np.zeros((0, self.dim), np.float32)
                yield Batch(decoded.ids, vectors, decoded.failures)
