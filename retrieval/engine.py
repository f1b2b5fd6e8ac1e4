"""``SearchEngine``: load an index once, then search it with photos (or vectors) from any thread."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from downloader.metadata import BBox
from embeddings.extraction.preprocess import ImageSource

from .ranking import Ranker
from .store import IndexData, IndexFileError, load_index


@dataclass(frozen=True)
class Match:
    """One shop product found for a query: its best photo, the distance and a same-item score in [0, 1]."""

    rank: int
    product: int
    photo: int
    path: str
    category: str
    distance: float
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights_for(backbone: dict[str, Any], weights: str | Path | None) -> str | Path | None:
    """The weights a query must use: what the index was built with, or the file given for it."""
    recorded = backbone.get("weights")
    if weights is not None:
        return weights
    if recorded == "imagenet":
        return "imagenet"
    if recorded == "random:0":
        return None
    hint = backbone.get("weights_file")
    if hint and Path(hint).is_file():
        return hint
    raise IndexFileError(f"the index was built with the weights file {recorded} ({hint or 'path unknown'}): "
                         f"pass it with --weights PATH")


class SearchEngine:
    """Rank the shop photos of an index for street photos.

    Build with ``SearchEngine.load("index.h5")``. The backbone and head are those the index records;
    they are loaded on the first image query, so that vector-only use stays light. ``search`` and
    ``search_batch`` are thread-safe: the index is read-only and the networks run under a lock.
    """

    def __init__(self, index: IndexData, head: Any | None = None, extractor: Any | None = None,
                 weights: str | Path | None = None) -> None:
        if not len(index):
            raise IndexFileError("the index is empty: nothing to search")
        self.index = index
        self.head = head
        self._weights = weights
        self._lock = threading.Lock()
        if extractor is not None:
            self._check_extractor(extractor)
        self._extractor = extractor
        metric = index.attrs.get("metric", "euclidean")
        if index.approximate:
            from .ann import AnnRanker

            self.ranker: Any = AnnRanker(index, metric)
        else:
            self.ranker = Ranker(index.embeddings, metric)
        self.slices = index.category_slices()

    def _check_extractor(self, extractor: Any) -> None:
        """Raise ``CacheError`` unless ``extractor`` makes vectors as the index's were made (expected vs actual)."""
        from embeddings.extraction.cache import check_identity

        backbone = self.index.attrs["backbone"]
        check_identity("the query extractor", extractor.describe(),
                       {k: v for k, v in backbone.items() if k != "weights_file"})

    @classmethod
    def load(cls, path: str | Path, head: str | Path | None = None, weights: str | Path | None = None,
             extractor: Any | None = None) -> "SearchEngine":
        """Load ``path``; ``head`` overrides the head folder the index records and must be the same head.

        Raises:
            FileNotFoundError, IndexFileError: a missing, corrupt or empty index, or another head.
        """
        from embeddings.learning.head import load_head

        index = load_index(path)
        recorded = index.attrs.get("head")
        loaded = None
        if recorded is not None:
            folder = Path(head) if head is not None else Path(recorded["path"])
            loaded = load_head(folder)
            if loaded.identity != recorded["identity"]:
                raise IndexFileError(f"{path}: built with head {recorded['identity']}, but {folder} is head "
                                     f"{loaded.identity}: rebuild the index with this head")
        elif head is not None:
            raise IndexFileError(f"{path}: built from raw vectors without a head; build an index with --head {head}")
        if not len(index):
            raise IndexFileError(f"{path}: the index is empty")
        return cls(index, loaded, extractor, weights)

    @property
    def extractor(self) -> Any:
        with self._lock:
            if self._extractor is None:
                from embeddings.extraction.extractor import Extractor

                backbone = self.index.attrs["backbone"]
                options = {key: backbone[key] for key in ("decode", "precision") if key in backbone}
                if str(backbone["backbone"]).startswith("tower:"):  # vectors of a tower (embeddings.finetune)
                    from embeddings.learning.tower_extractor import TowerExtractor

                    made = TowerExtractor(_weights_for(backbone, self._weights), decode=options.get("decode", "exact"))
                else:
                    made = Extractor(backbone["backbone"], _weights_for(backbone, self._weights), **options)
                self._check_extractor(made)  # checked before it is kept: a mismatch is never used later
                self._extractor = made
            return self._extractor

    def embed_images(self, images: Sequence[ImageSource], bboxes: Sequence[BBox | None] | None = None) -> np.ndarray:
        """Query embeddings: the same backbone, then the same head, as the index."""
        vectors = self.extractor.embed(list(images), bboxes)
        return self.embed_vectors(vectors)

    def embed_vectors(self, vectors: np.ndarray) -> np.ndarray:
        if self.head is None:
            return np.asarray(vectors, np.float32)
        with self._lock:
            return self.head.embed(vectors)

    def score(self, distances: np.ndarray) -> np.ndarray:
        """Same-item score in [0, 1]: the head's calibrated score, or ``1 - d/2`` for raw cosine distances."""
        if self.head is not None:
            return self.head.calibration.score(distances)
        return np.clip(1.0 - np.asarray(distances) / 2.0, 0.0, 1.0)

    def _range(self, category: str | None) -> tuple[int, int]:
        if category is None:
            return 0, len(self.index)
        if category not in self.slices:
            known = ", ".join(sorted(self.slices))
            raise IndexFileError(f"no shop photo of category {category!r} in the index (it has: {known})")
        return self.slices[category]

    def search_embeddings(self, embeddings: np.ndarray, k: int = 10, category: str | None = None,
                          distinct_products: bool = True) -> list[list[Match]]:
        """Top ``k`` matches for each embedding; with ``distinct_products``, each product once, at its best photo."""
        start, stop = self._range(category)
        embeddings = np.atleast_2d(embeddings)
        results: list[list[Match]] = [[] for _ in range(len(embeddings))]
        pending = np.arange(len(embeddings))
        # an approximate index is not asked for the whole category: many photos per product is rare
        limit = stop - start if not self.index.approximate else min(stop - start, max(64 * k, 1024))
        depth = k if not distinct_products else min(limit, 4 * k)
        while len(pending):
            rows, distances = self.ranker.search(embeddings[pending], depth, start, stop)
            scores = self.score(distances)
            unfinished = []
            for query, row_list, dist_list, score_list in zip(pending, rows, distances, scores):
                matches, seen = [], set()
                for row, distance, score in zip(row_list, dist_list, score_list):
                    if row < 0:  # an approximate index found fewer rows
                        break
                    product = int(self.index.products[row])
                    if distinct_products and product in seen:
                        continue
                    seen.add(product)
                    matches.append(Match(len(matches) + 1, product, int(self.index.photos[row]),
                                         self.index.path(row), self.index.category(row),
                                         float(distance), float(score)))
                    if len(matches) == k:
                        break
                if len(matches) < k and depth < limit:
                    unfinished.append(query)  # many photos of few products: look deeper
                results[query] = matches
            pending = np.array(unfinished, dtype=np.int64)
            depth = min(limit, depth * 4)
        return results

    def search_vectors(self, vectors: np.ndarray, k: int = 10, category: str | None = None) -> list[list[Match]]:
        """Top ``k`` products for backbone vectors (before the head), one product once, for each row.

        Raises:
            ValueError: vectors of another dimension than the index's backbone.
            IndexFileError: an unknown category.
        """
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        dim = self.index.attrs["backbone"].get("dim")
        if dim is not None and vectors.shape[1] != dim:
            raise ValueError(f"expected backbone vectors of dimension {dim}, got {vectors.shape[1]}")
        self._range(category)
        return self.search_embeddings(self.embed_vectors(vectors), k, category)

    def search(self, image: ImageSource, k: int = 10, category: str | None = None,
               bbox: BBox | None = None) -> list[Match]:
        """The ``k`` best shop products for one photo (a path, a PIL image or an RGB array), cut to ``bbox``.

        Raises:
            FileNotFoundError, downloader.ImageError: a missing or unreadable image, or a box outside it.
            IndexFileError: an unknown category.
        """
        self._range(category)
        return self.search_embeddings(self.embed_images([image], [bbox]), k, category)[0]

    def search_batch(self, images: Sequence[ImageSource], k: int = 10, category: str | None = None,
                     bboxes: Sequence[BBox | None] | None = None) -> list[list[Match]]:
        """``search`` for many photos at once (one network batch, one ranking pass)."""
        self._range(category)
        return self.search_embeddings(self.embed_images(images, bboxes), k, category)
