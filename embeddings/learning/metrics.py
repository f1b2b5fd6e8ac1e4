"""Retrieval accuracy and pair calibration, in NumPy: shared by training and evaluation."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .head import Calibration


def euclidean_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All Euclidean distances between rows of ``a`` and ``b`` through one BLAS product (float32 in, float64
    out): for the large validation sets of 4096-d raw vectors, where ``cdist`` is many times slower."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    squared = (np.einsum("ij,ij->i", a, a, dtype=np.float64)[:, None] - 2.0 * (a @ b.T)
               + np.einsum("ij,ij->i", b, b, dtype=np.float64)[None, :])
    return np.sqrt(np.maximum(squared, 0.0))


def first_hit_rank(distances: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                   query_groups: np.ndarray | None = None, gallery_groups: np.ndarray | None = None,
                   exclude_self: bool = False) -> np.ndarray:
    """For each query, the 1-based rank of the first gallery item with its label (0 when none is ranked).

    ``groups`` restrict each query's gallery to items of its group (the category), as the Street2Shop
    paper ranks within a category; ``exclude_self`` drops the diagonal when the query set is the gallery.
    Ties are broken by gallery order.
    """
    distances = np.array(distances, dtype=np.float64, copy=True)
    if query_groups is not None and gallery_groups is not None:
        distances[np.asarray(query_groups)[:, None] != np.asarray(gallery_groups)[None, :]] = np.inf
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")
    hits = (np.asarray(gallery_labels)[order] == np.asarray(query_labels)[:, None]) & np.isfinite(
        np.take_along_axis(distances, order, axis=1))
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1) + 1, 0)


def topk_accuracy(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10, 20, 50)) -> dict[int, float]:
    """Share of queries whose first hit is within the top ``k``."""
    ranks = np.asarray(ranks)
    if not len(ranks):
        return {k: float("nan") for k in ks}
    return {k: float(np.mean((ranks >= 1) & (ranks <= k))) for k in ks}


def retrieval_accuracy(queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                       gallery_labels: np.ndarray, query_groups: np.ndarray | None = None,
                       gallery_groups: np.ndarray | None = None, exclude_self: bool = False,
                       ks: Sequence[int] = (1, 10)) -> dict[int, float]:
    """Top-k accuracy of ranking ``gallery`` by Euclidean distance for each query (small sets: one matrix)."""
    distances = euclidean_distances(queries, gallery)
    return topk_accuracy(first_hit_rank(distances, query_labels, gallery_labels, query_groups, gallery_groups,
                                        exclude_self), ks)


def fit_calibration(positive: np.ndarray, negative: np.ndarray, iterations: int = 50) -> Calibration:
    """Fit ``sigmoid(a * d + b)`` to matching (1) and non-matching (0) pair distances by Newton's method on
    the class-balanced log-loss, and pick the distance threshold with the best balanced pair accuracy."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        raise ValueError("calibration needs matching and non-matching pairs")
    d = np.concatenate([positive, negative])
    y = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    w = np.where(y == 1, 0.5 / len(positive), 0.5 / len(negative))
    scale = max(float(d.std()), 1e-6)
    x = np.stack([d / scale, np.ones_like(d)], axis=1)
    theta = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ theta, -50, 50)))
        gradient = x.T @ (w * (p - y))
        hessian = (x * (w * p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    candidates = np.unique(d)
    cuts = np.concatenate([[candidates[0] - 1e-6], (candidates[:-1] + candidates[1:]) / 2, [candidates[-1] + 1e-6]])
    accuracy = 0.5 * (np.searchsorted(np.sort(positive), cuts, side="right") / len(positive)
                      + 1 - np.searchsorted(np.sort(negative), cuts, side="right") / len(negative))
    best = int(np.argmax(accuracy))
    return Calibration(a=float(theta[0] / scale), b=float(theta[1]), threshold=float(cuts[best]),
                       pair_accuracy=float(accuracy[best]))


def pair_accuracy(positive: np.ndarray, negative: np.ndarray, threshold: float) -> float:
    """Balanced accuracy of calling a pair 'same' when its distance is at most ``threshold``."""
    return float(0.5 * (np.mean(np.asarray(positive) <= threshold) + np.mean(np.asarray(negative) > threshold)))
