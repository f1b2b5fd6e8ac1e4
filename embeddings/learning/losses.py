"""Metric-learning losses as small factories, written with ``keras.ops`` so they run on any backend.

Distances are Euclidean (not squared) between embeddings.
"""

from __future__ import annotations

from typing import Callable, Literal

Mining = Literal["batch-all", "batch-hard", "semi-hard"]
MINING: tuple[str, ...] = ("batch-all", "batch-hard", "semi-hard")


def default_margin(loss: str) -> float:
    """The margin used when none is given: 0.2 for triplet (unit-length embeddings), 1.0 for contrastive."""
    return 0.2 if loss == "triplet" else 1.0


def check_loss(loss: str, mining: str) -> None:
    """Raise ``ValueError`` unless ``loss`` is triplet or contrastive and ``mining`` one of ``MINING``."""
    if loss not in ("triplet", "contrastive"):
        raise ValueError(f"loss must be triplet or contrastive, got {loss!r}")
    if mining not in MINING:
        raise ValueError(f"mining must be one of {list(MINING)}, got {mining!r}")


def contrastive_loss(margin: float = 1.0) -> Callable:
    """Hadsell et al. 2006: ``mean(y * d**2 + (1 - y) * max(margin - d, 0)**2)``.

    ``y_true`` is 1 for a matching pair and 0 for a non-matching one; ``y_pred`` is the pair's distance ``d``.
    """
    from keras import ops

    def loss(y_true, y_pred):
        y = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        d = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        return ops.mean(y * ops.square(d) + (1.0 - y) * ops.square(ops.maximum(margin - d, 0.0)))

    loss.__name__ = "contrastive_loss"
    return loss


def pairwise_distances(embeddings):
    """``D[i, j] = ||e_i - e_j||``, with a zero (and a finite gradient) on the diagonal."""
    from keras import ops

    dot = ops.matmul(embeddings, ops.transpose(embeddings))
    norms = ops.diagonal(dot)
    squared = ops.maximum(ops.expand_dims(norms, 1) - 2.0 * dot + ops.expand_dims(norms, 0), 0.0)
    zero = ops.cast(ops.equal(squared, 0.0), "float32")
    return ops.sqrt(squared + zero * 1e-16) * (1.0 - zero)


def triplet_loss(margin: float = 0.2, mining: Mining = "semi-hard") -> Callable:
    """Triplet loss ``max(d(a, p) - d(a, n) + margin, 0)`` over the triplets of a batch, mined online.

    ``y_true`` holds integer labels, ``y_pred`` the embeddings of one batch.
    - ``batch-all``: the mean over every valid triplet whose loss is positive (Hermans et al. 2017).
    - ``batch-hard``: per anchor, its farthest positive and nearest negative; mean over anchors with a positive.
    - ``semi-hard``: per (anchor, positive), the nearest negative farther than the positive, or the farthest
      negative if there is none (Schroff et al. 2015, as TensorFlow Addons does); mean over the pairs.
    """
    if mining not in MINING:
        raise ValueError(f"unknown mining {mining!r}; expected one of {list(MINING)}")
    from keras import ops

    def masks(y_true, count):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        same = ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1))
        not_self = ops.logical_not(ops.cast(ops.eye(count), "bool"))
        return ops.cast(ops.logical_and(same, not_self), "float32"), ops.cast(ops.logical_not(same), "float32")

    def batch_all(y_true, y_pred):
        d = pairwise_distances(y_pred)
        positive, negative = masks(y_true, ops.shape(y_pred)[0])
        # losses[a, p, n] = d[a, p] - d[a, n] + margin, valid where p is a positive and n a negative of a
        losses = ops.expand_dims(d, 2) - ops.expand_dims(d, 1) + margin
        valid = ops.expand_dims(positive, 2) * ops.expand_dims(negative, 1)
        losses = ops.maximum(losses * valid, 0.0)
        active = ops.sum(ops.cast(ops.greater(losses, 1e-16), "float32"))
        return ops.sum(losses) / ops.maximum(active, 1.0)

    def batch_hard(y_true, y_pred):
        d = pairwise_distances(y_pred)
        positive, negative = masks(y_true, ops.shape(y_pred)[0])
        hardest_positive = ops.max(d * positive, axis=1)
        largest = ops.max(d, axis=1, keepdims=True)
        hardest_negative = ops.min(d + largest * (1.0 - negative), axis=1)
        has_positive = ops.cast(ops.greater(ops.sum(positive, axis=1), 0.0), "float32")
        losses = ops.maximum(hardest_positive - hardest_negative + margin, 0.0) * has_positive
        return ops.sum(losses) / ops.maximum(ops.sum(has_positive), 1.0)

    def semi_hard(y_true, y_pred):
        d = pairwise_distances(y_pred)
        positive, negative = masks(y_true, ops.shape(y_pred)[0])
        big = ops.max(d) + 1.0
        # Each anchor's negative distances in ascending order (non-negatives pushed past the end); the
        # nearest negative farther than d(a, p) sits at the count of negatives within d(a, p).
        ordered = ops.sort(d + big * (1.0 - negative), axis=1)  # [a, n]
        within = ops.sum(ops.cast(ops.logical_and(
            ops.expand_dims(negative, 1) > 0, ops.expand_dims(d, 1) <= ops.expand_dims(d, 2)), "int32"), axis=2)
        negatives = ops.cast(ops.sum(negative, axis=1, keepdims=True), "int32")  # [a, 1]
        has_outside = ops.cast(within < negatives, "float32")  # [a, p]
        nearest_outside = ops.take_along_axis(ordered, ops.maximum(ops.minimum(within, negatives - 1), 0), axis=1)
        farthest = ops.max(d * negative, axis=1, keepdims=True)  # [a, 1]
        chosen = has_outside * nearest_outside + (1.0 - has_outside) * farthest
        losses = ops.maximum(d - chosen + margin, 0.0) * positive
        return ops.sum(losses) / ops.maximum(ops.sum(positive), 1.0)

    loss = {"batch-all": batch_all, "batch-hard": batch_hard, "semi-hard": semi_hard}[mining]
    loss.__name__ = f"triplet_{mining.replace('-', '_')}_loss"
    return loss
