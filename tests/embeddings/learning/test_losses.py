"""Each loss against values computed by hand on tiny inputs."""

import numpy as np
import pytest

from embeddings.learning.losses import contrastive_loss, pairwise_distances, triplet_loss


def value(loss, y_true, y_pred) -> float:
    from keras import ops

    return float(ops.convert_to_numpy(loss(np.asarray(y_true, np.float32), np.asarray(y_pred, np.float32))))


def test_contrastive_by_hand():
    # matching pair at d=0.5 -> 0.25; non-matching at d=0.25, margin 1 -> 0.75**2 = 0.5625; non-matching
    # beyond the margin (d=2) -> 0. Mean: (0.25 + 0.5625 + 0) / 3.
    got = value(contrastive_loss(margin=1.0), [1, 0, 0], [0.5, 0.25, 2.0])
    assert got == pytest.approx((0.25 + 0.5625) / 3)


def test_pairwise_distances_match_scipy():
    from keras import ops
    from scipy.spatial.distance import cdist

    points = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    got = ops.convert_to_numpy(pairwise_distances(points))
    np.testing.assert_allclose(got, cdist(points, points), atol=1e-5)


# Four points on a line: labels 0, 0, 1, 1 at positions 0, 1, 1.5, 3.
POINTS = [[0.0], [1.0], [1.5], [3.0]]
LABELS = [0, 0, 1, 1]
# Distances: d01=1, d02=1.5, d03=3, d12=0.5, d13=2, d23=1.5. Margin 1.


def test_batch_all_by_hand():
    # Valid (a, p, n) and d(a,p) - d(a,n) + 1, kept if positive:
    # a0 p1: n2: 1-1.5+1=0.5, n3: 1-3+1=-1 -> 0.5      a1 p0: n2: 1-0.5+1=1.5, n3: 1-2+1=0 -> 1.5
    # a2 p3: n0: 1.5-1.5+1=1, n1: 1.5-0.5+1=2          a3 p2: n0: 1.5-3+1=-0.5, n1: 1.5-2+1=0.5
    # positive losses: 0.5, 1.5, 1, 2, 0.5 -> mean 5.5 / 5
    assert value(triplet_loss(1.0, "batch-all"), LABELS, POINTS) == pytest.approx(5.5 / 5)


def test_batch_hard_by_hand():
    # a0: hardest p=1 (1), hardest n=2 (1.5): 0.5      a1: p 1, n=2 (0.5): 1.5
    # a2: p 1.5, n=1 (0.5): 2                          a3: p 1.5, n=1 (2): 0.5
    assert value(triplet_loss(1.0, "batch-hard"), LABELS, POINTS) == pytest.approx((0.5 + 1.5 + 2 + 0.5) / 4)


def test_semi_hard_by_hand():
    # (a0,p1) d=1: negatives farther than 1: n2 (1.5), n3 (3) -> nearest 1.5: 1-1.5+1 = 0.5
    # (a1,p0) d=1: farther than 1: n3 (2) -> 1-2+1 = 0
    # (a2,p3) d=1.5: none farther (1.5 is not > 1.5, 0.5) -> farthest 1.5: 1.5-1.5+1 = 1
    # (a3,p2) d=1.5: farther: n0 (3), n1 (2) -> nearest 2: 1.5-2+1 = 0.5
    assert value(triplet_loss(1.0, "semi-hard"), LABELS, POINTS) == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)


def semi_hard_reference(labels, points, margin):
    """Straight from the definition, one (anchor, positive) pair at a time."""
    from scipy.spatial.distance import cdist

    d = cdist(points, points)
    losses = []
    for a in range(len(labels)):
        negatives = d[a][labels != labels[a]]
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = negatives[negatives > d[a, p]]
            chosen = farther.min() if len(farther) else negatives.max()
            losses.append(max(d[a, p] - chosen + margin, 0.0))
    return np.mean(losses)


def test_semi_hard_equals_the_definition_on_random_batches():
    rng = np.random.default_rng(3)
    for _ in range(5):
        labels = rng.integers(0, 5, size=24)
        points = rng.normal(size=(24, 6)).astype(np.float32)
        got = value(triplet_loss(0.5, "semi-hard"), labels, points)
        assert got == pytest.approx(semi_hard_reference(labels, points, 0.5), rel=1e-4)


def test_unknown_mining_is_refused():
    with pytest.raises(ValueError, match="unknown mining 'hardest'"):
        triplet_loss(0.2, "hardest")


def test_training_configs_name_an_unknown_loss_or_mining(tmp_path):
    from embeddings import FinetuneConfig, TrainConfig

    with pytest.raises(ValueError, match=r"mining must be one of \['batch-all', 'batch-hard', 'semi-hard'\], got 'hardest'"):
        TrainConfig(vectors=tmp_path / "v.h5", out=tmp_path / "head", mining="hardest").validate()
    with pytest.raises(ValueError, match="loss must be triplet or contrastive, got 'arcface'"):
        FinetuneConfig(out=tmp_path / "tower", images=tmp_path, loss="arcface").validate()
