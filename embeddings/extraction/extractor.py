"""Turn images into backbone vectors, decoding the next batches in threads while the network runs."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from downloader.images import ImageError
from downloader.metadata import BBox

from .backbones import Backbone, build_model, get_backbone, preprocess_function, weights_id
from .preprocess import ImageSource, to_input, to_pil

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Vectors for the readable images of one batch, and why the others were skipped."""

    ids: list[str]
    vectors: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


class Extractor:
    """A backbone cut below its classifier: ``Extractor("vgg19", weights="imagenet")``.

    Args:
        backbone: ``vgg19`` (fc2, 4096-d, default), ``vgg16``, ``resnet50``, ``mobilenet_v2`` or a spec.
        weights: ``"imagenet"``, a local weights file, or ``None`` for seeded random weights.
        batch_size: images per network call.
        workers: decoding threads (default: CPU count).
        prefetch: batches decoded ahead of the network.
    """

    def __init__(self, backbone: str | Backbone = "vgg19", weights: str | Path | None = "imagenet",
                 batch_size: int = 32, workers: int | None = None, prefetch: int = 2) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.spec = get_backbone(backbone)
        self.weights = weights
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 2
        self.prefetch = max(1, prefetch)
        self.model = build_model(self.spec, weights)
        self.weights_id = weights_id(weights)
        self._preprocess = preprocess_function(self.spec)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.output.shape[-1])

    def describe(self) -> dict[str, object]:
        """What makes these vectors comparable: recorded in caches and indexes."""
        described = {"backbone": self.spec.name, "layer": self.spec.layer, "weights": self.weights_id,
                     "input_size": list(self.spec.input_size), "dim": self.dim}
        if self.weights not in (None, "imagenet"):
            described["weights_file"] = str(Path(self.weights).resolve())  # a hint for queries; not identity
        return described

    def prepare(self, source: ImageSource, bbox: BBox | None = None) -> np.ndarray:
        """The network input for one image (the shared preprocessing)."""
        return to_input(to_pil(source, bbox), self.spec.input_size, self._preprocess)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Run the network on prepared inputs; safe to call from several threads."""
        with self._lock:
            return np.asarray(self.model.predict_on_batch(inputs), dtype=np.float32)

    def embed(self, sources: Sequence[ImageSource], bboxes: Sequence[BBox | None] | None = None) -> np.ndarray:
        """Vectors for a few images, in order; any unreadable image raises.

        Raises:
            FileNotFoundError, downloader.ImageError: naming the image.
        """
        bboxes = list(bboxes) if bboxes is not None else [None] * len(sources)
        if not sources:
            return np.zeros((0, self.dim), dtype=np.float32)
        inputs = np.stack([self.prepare(s, b) for s, b in zip(sources, bboxes)])
        return np.concatenate([self.predict(inputs[i:i + self.batch_size])
                               for i in range(0, len(inputs), self.batch_size)])

    def _decode(self, source: ImageSource) -> np.ndarray | str:
        try:
            return self.prepare(source)
        except (ImageError, OSError) as error:
            return str(error)

    def batches(self, items: Iterable[tuple[str, ImageSource]]) -> Iterator[Batch]:
        """Vectors for ``(id, image)`` pairs, batch by batch, in order; unreadable images are reported
        in ``Batch.failures`` and skipped. The next ``prefetch`` batches decode while the network runs."""
        items = iter(items)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[list[tuple[str, Future]]] = deque()

            def submit() -> None:
                chunk = list(islice(items, self.batch_size))
                if chunk:
                    pending.append([(key, pool.submit(self._decode, source)) for key, source in chunk])

            for _ in range(self.prefetch + 1):
                submit()
            while pending:
                chunk = pending.popleft()
                submit()
                ids, inputs, failures = [], [], []
                for key, future in chunk:
                    result = future.result()
                    if isinstance(result, str):
                        failures.append((key, result))
                    else:
                        ids.append(key)
                        inputs.append(result)
                vectors = self.predict(np.stack(inputs)) if inputs else np.zeros((0, self.dim), np.float32)
                yield Batch(ids, vectors, failures)
