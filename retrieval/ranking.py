"""Exact k-nearest-neighbour ranking with ``scipy.spatial.distance.cdist`` semantics, fast on large indexes.

The index is scanned in chunks: a BLAS matrix product gives each chunk's scores, ``argpartition`` keeps
a few more than k candidates per query, and the candidates' distances are then computed exactly in
float64, as ``cdist`` would, and sorted (ties by index order). Memory beyond the index stays under
``scratch_bytes`` whatever the index size.

Exactness: the float32 scan can misorder rows whose scores differ by less than its rounding error.
A bound on that error is computed per query; where the k-th and the last kept candidate are closer
than twice the bound, a true neighbour may have been dropped, and that query is ranked again over
every row in float64 (rare: it takes near-duplicate rows).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Metric = Literal["euclidean", "cosine"]
METRICS: tuple[str, ...] = ("euclidean", "cosine")
SCRATCH_BYTES = 32 << 20  # a ranker's working memory, whatever the number of rows


class Ranker:
    """Rank the rows of ``vectors`` (N x D) for queries; ``search`` may restrict to a row range.

    Args:
        metric: ``euclidean`` or ``cosine`` (``1 - u.v / (|u| |v|)``), as in ``cdist``.
        slack: extra candidates kept per query, so that float32 rounding in the scan can never push a
            true top-k row out before the exact float64 re-ranking.
        scratch_bytes: working memory for one chunk of scores (default ``SCRATCH_BYTES``).
    """

    def __init__(self, vectors: np.ndarray, metric: Metric = "euclidean", slack: int = 32,
                 scratch_bytes: int | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {list(METRICS)}")
        if not isinstance(vectors, np.memmap):
            vectors = np.ascontiguousarray(vectors, dtype=np.float16 if vectors.dtype == np.float16 else np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"expected an N x D matrix, got shape {vectors.shape}")
        self.vectors = vectors
        self.metric = metric
        self.slack = slack
        self.scratch_bytes = scratch_bytes or SCRATCH_BYTES
        norms = self._norms()
        self._max_norm = float(np.sqrt(norms.max())) if len(norms) else 0.0
        if metric == "euclidean":
            self._offset = norms.astype(np.float32)  # |x|^2: with -2 q.x, orders like the distance
        else:
            with np.errstate(divide="ignore"):
                self._scale = np.where(norms > 0, 1 / np.sqrt(norms), 0).astype(np.float32)

    def _norms(self) -> np.ndarray:
        """Squared norms in float64, a chunk at a time (float16 or memory-mapped rows are never copied whole)."""
        chunk = max(1, self.scratch_bytes // (8 * max(self.dim, 1)))
        return np.concatenate([np.einsum("ij,ij->i", block, block, dtype=np.float64)
                               for block in (self._rows(b, b + chunk) for b in range(0, len(self.vectors), chunk))]
                              or [np.zeros(0)])

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 (a view when stored so, else a converted copy)."""
        block = self.vectors[start:stop]
        return block if block.dtype == np.float32 else block.astype(np.float32)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def _partial(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        """A score per (query, row) that orders rows as the distance does, for rows ``start:stop``."""
        scores = queries @ self._rows(start, stop).T
        if self.metric == "euclidean":
            scores *= -2
            scores += self._offset[start:stop]
        else:
            scores *= -self._scale[start:stop]
        return scores

    def _error_bound(self, queries: np.ndarray) -> np.ndarray:
        """Worst-case float32 error of ``_partial`` per query (Higham's bound for a dot product of length d)."""
        unit = 2.0 ** -24
        gamma = self.dim * unit / (1 - self.dim * unit)
        q = np.linalg.norm(queries.astype(np.float64), axis=1)
        if self.metric == "euclidean":
            return (2 * gamma + 4 * unit) * q * self._max_norm + 3 * unit * self._max_norm ** 2
        return (gamma + 4 * unit) * q

    def _rank_all(self, query: np.ndarray, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Float64 distances to every row of the range, chunked; the k nearest."""
        chunk = max(1, self.scratch_bytes // (8 * self.dim * 3))
        distances = np.concatenate([self.exact(query[None], np.arange(b, min(stop, b + chunk))[None])[0]
                                    for b in range(start, stop, chunk)])
        order = np.lexsort((np.arange(len(distances)), distances))[:k]
        return order + start, distances[order]

    def exact(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``cdist`` distances (float64) between each query and its own candidate ``rows`` (Q x C), a block
        of queries at a time so that the float64 copies stay within ``scratch_bytes``."""
        block = max(1, self.scratch_bytes // (3 * 8 * self.dim * max(rows.shape[1], 1)))
        if len(queries) <= block:
            return self._exact(queries, rows)
        return np.concatenate([self._exact(queries[b:b + block], rows[b:b + block])
                               for b in range(0, len(queries), block)])

    def _exact(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        q = queries.astype(np.float64)[:, None, :]
        x = self.vectors[rows].astype(np.float64)
        if self.metric == "euclidean":
            return np.sqrt(np.square(x - q).sum(axis=2))
        dot = (x * q).sum(axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - dot / (np.linalg.norm(x, axis=2) * np.linalg.norm(q, axis=2))

    @staticmethod
    def _best(rows_found: list[np.ndarray], scores_found: list[np.ndarray],
              keep: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The ``keep`` best-scored candidates per query among those gathered so far, as one block."""
        rows, scores = np.concatenate(rows_found, axis=1), np.concatenate(scores_found, axis=1)
        if rows.shape[1] > keep:
            best = np.argpartition(scores, keep - 1, axis=1)[:, :keep]
            rows, scores = np.take_along_axis(rows, best, axis=1), np.take_along_axis(scores, best, axis=1)
        return [rows], [scores]

    def search(self, queries: np.ndarray, k: int = 10, start: int = 0,
               stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of ``start:stop`` for each query: ``(rows, distances)``, each Q x k',
        k' = min(k, rows in range), nearest first, ties broken by row order.

        Raises:
            ValueError: queries of the wrong dimension, k < 1, or an empty range.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        stop = len(self.vectors) if stop is None else stop
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not 0 <= start < stop <= len(self.vectors):
            raise ValueError(f"nothing to rank: rows {start}:{stop} of an index of {len(self.vectors)}")
        total = stop - start
        keep = min(total, k + self.slack)
        chunk = max(keep, self.scratch_bytes // (16 * max(len(queries), 1) + (4 * self.dim if
                                                                                self.vectors.dtype != np.float32 else 0)))
        rows_found, scores_found = [], []
        for begin in range(start, stop, chunk):
            end = min(stop, begin + chunk)
            scores = self._partial(queries, begin, end)
            take = min(keep, end - begin)
            if take < end - begin:
                best = np.argpartition(scores, take - 1, axis=1)[:, :take]
                scores = np.take_along_axis(scores, best, axis=1)
            else:
                best = np.broadcast_to(np.arange(end - begin), scores.shape)
            rows_found.append(best + begin)
            scores_found.append(scores)
            if sum(part.shape[1] for part in rows_found) > 4 * keep:  # candidates stay O(queries x keep)
                rows_found, scores_found = self._best(rows_found, scores_found, keep)
        rows_found, scores_found = self._best(rows_found, scores_found, keep)
        rows, scores = rows_found[0], scores_found[0]
        distances = self.exact(queries, rows)
        order = np.lexsort((rows, distances), axis=1)[:, : min(k, total)]
        rows, distances = np.take_along_axis(rows, order, axis=1), np.take_along_axis(distances, order, axis=1)
        if keep < total:
            ordered = np.sort(scores, axis=1)
            unsure = ordered[:, -1] - ordered[:, min(k, total) - 1] <= 2 * self._error_bound(queries)
            for index in np.flatnonzero(unsure):
                rows[index], distances[index] = self._rank_all(queries[index], start, stop, min(k, total))
        return rows, distances
