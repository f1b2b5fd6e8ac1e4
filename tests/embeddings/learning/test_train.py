import json

import numpy as np
import pytest

from embeddings import HeadConfig, TrainConfig, Vectors, load_head, train, write_vectors
from embeddings.learning.metrics import first_hit_rank, fit_calibration, topk_accuracy
from embeddings.learning.samplers import from_labels, split_validation

ATTRS = {"backbone": "vgg19", "layer": "fc2", "weights": "random:0", "input_size": [224, 224]}


def hidden_classes(classes=8, per_class=60, dim=32, signal_dims=4, seed=0):
    """Classes that differ only in a few dimensions, drowned by large noise in all the others:
    nearest neighbours on raw vectors are near chance, a learned projection separates them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, signal_dims)) * 1.5
    labels = np.repeat(np.arange(classes), per_class)
    vectors = rng.normal(scale=3.0, size=(len(labels), dim))
    vectors[:, :signal_dims] = centres[labels] + rng.normal(scale=0.3, size=(len(labels), signal_dims))
    return vectors.astype(np.float32), labels


def write_labelled(path, vectors, labels):
    write_vectors(path, Vectors(np.array([f"{i}.jpg" for i in range(len(labels))], dtype=object), vectors,
                                dict(ATTRS, dim=vectors.shape[1]), np.array([f"class{l}" for l in labels], dtype=object)))


def quick(tmp_path, **kw) -> TrainConfig:
    kw.setdefault("head", HeadConfig(hidden=(64,), dim=16, dropout=0.0, seed=0))
    kw.setdefault("epochs", 25)
    return TrainConfig(vectors=tmp_path / "v.h5", out=tmp_path / "head", batch_size=64,
                       patience=25, val_fraction=0.25, learning_rate=3e-3, **kw)


@pytest.mark.parametrize("loss, mining", [("triplet", "batch-hard"), ("triplet", "semi-hard"),
                                          ("triplet", "batch-all"), ("contrastive", "semi-hard")])
def test_head_learns_what_raw_ranking_cannot(tmp_path, loss, mining):
    vectors, labels = hidden_classes()
    write_labelled(tmp_path / "v.h5", vectors, labels)
    result = train(quick(tmp_path, loss=loss, mining=mining))
    assert result.raw["top1"] < 0.35  # measured 0.21
    assert result.head["top1"] > 0.7 and result.head["top1"] > result.raw["top1"] + 0.4  # measured 0.86-0.95
    assert result.head["pair_accuracy"] > result.raw["pair_accuracy"]


def test_outputs_and_loading(tmp_path):
    vectors, labels = hidden_classes(classes=6, per_class=12)
    write_labelled(tmp_path / "v.h5", vectors, labels)
    result = train(quick(tmp_path, epochs=3))
    folder = tmp_path / "head"
    assert {p.name for p in folder.iterdir()} == {"model.keras", "config.json", "history.json", "training.png"}
    config = json.loads((folder / "config.json").read_text())
    assert config["vectors"]["backbone"] == "vgg19" and config["vectors"]["weights"] == "random:0"
    assert config["training"]["margin"] == 0.2 and config["head"]["dim"] == 16
    assert config["data"]["train_items"] + config["data"]["val_items"] == len(labels)
    history = json.loads((folder / "history.json").read_text())
    assert len(history["loss"]) == result.epochs_run == 3 and len(history["val_top10"]) == 3
    head = load_head(folder)
    embedded = head.embed(vectors[:5])
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-5)
    same_class = np.flatnonzero(labels == labels[0])[1]
    other_class = np.flatnonzero(labels != labels[0])[0]
    distance, score, same = head.compare(vectors[[0, 0]], vectors[[same_class, other_class]])
    np.testing.assert_allclose(distance, np.linalg.norm(head.embed(vectors[[0, 0]])
                                                        - head.embed(vectors[[same_class, other_class]]), axis=1),
                               rtol=1e-5)
    np.testing.assert_allclose(score, head.calibration.score(distance))
    assert list(same) == list(distance <= config["calibration"]["threshold"])
    with pytest.raises(ValueError, match="head expects vectors of dimension 32"):
        head.embed(vectors[:5, :10])


def test_seeded_runs_repeat(tmp_path):
    vectors, labels = hidden_classes(classes=6, per_class=12)
    write_labelled(tmp_path / "v.h5", vectors, labels)
    first = json.loads((train(quick(tmp_path, epochs=3)).out / "history.json").read_text())
    second = json.loads((train(quick(tmp_path, epochs=3)).out / "history.json").read_text())
    np.testing.assert_allclose(first["loss"], second["loss"], rtol=1e-5)


def test_validation_holds_out_whole_products():
    vectors, labels = hidden_classes(classes=20, per_class=4)
    items = from_labels(Vectors(np.arange(len(labels)).astype(str).astype(object), vectors, {},
                                np.array([str(l) for l in labels], dtype=object)))
    items.query[:] = np.arange(len(labels)) % 4 < 2  # pretend: two street, two shop per product
    items.gallery[:] = ~items.query
    train_set, val_set = split_validation(items, 0.25, seed=1)
    assert not set(train_set.labels) & set(val_set.labels)
    assert len(set(val_set.labels)) == 5


def test_first_hit_rank_by_hand():
    distances = np.array([[0.5, 0.1, 0.9], [0.2, 0.3, 0.1], [0.4, 0.6, 0.7]])
    gallery = np.array([7, 7, 8])
    # query 0 (label 8): order 1, 0, 2 -> labels 7, 7, 8 -> rank 3; query 1 (label 7): order 2, 0, 1 -> rank 2;
    # query 2 (label 9): no such item -> 0
    ranks = first_hit_rank(distances, np.array([8, 7, 9]), gallery)
    assert list(ranks) == [3, 2, 0]
    # within groups: query 0 (b) sees only item 2; query 1 (a) sees items 0 and 1
    grouped = first_hit_rank(distances, np.array([8, 7, 9]), gallery, np.array(["b", "a", "a"]),
                             np.array(["a", "a", "b"]))
    assert list(grouped) == [1, 1, 0]
    assert topk_accuracy(ranks, (1, 2, 3)) == {1: 0.0, 2: 1 / 3, 3: 2 / 3}


def test_calibration_separates_and_scores_monotonically():
    calibration = fit_calibration(np.array([0.1, 0.2, 0.3, 0.35]), np.array([0.5, 0.6, 0.9, 1.2]))
    assert 0.35 < calibration.threshold < 0.5 and calibration.pair_accuracy == 1.0
    scores = calibration.score(np.array([0.0, 0.4, 2.0]))
    assert scores[0] > 0.5 > scores[2] and np.all(np.diff(scores) < 0)


def _brute_force_top(embedded, items, k):
    """Top-k by ``cdist`` over the whole query x gallery matrix, within category, self excluded."""
    from scipy.spatial.distance import cdist

    queries, gallery = np.flatnonzero(items.query), np.flatnonzero(items.gallery)
    distances = cdist(embedded[queries], embedded[gallery])
    distances[items.groups[queries][:, None] != items.groups[gallery][None, :]] = np.inf
    if items.same_sides:
        np.fill_diagonal(distances, np.inf)
    hits = 0
    for row, query in enumerate(queries):
        order = np.argsort(distances[row], kind="stable")[:k]
        hits += any(np.isfinite(distances[row, g]) and items.labels[gallery[g]] == items.labels[query] for g in order)
    return hits / len(queries)


@pytest.mark.parametrize("same_sides", [True, False])
def test_validation_ranking_memory_is_a_block_of_queries(same_sides, monkeypatch):
    """Regression: validation ranked every query against the whole gallery in one float64 matrix, copied
    four times over (distances, masked copy, argsort, hits): 1,500 x 1,500 items peaked at ~80 MiB."""
    import tracemalloc

    from embeddings.learning import fit
    from embeddings.learning.fit import validation_pairs, evaluate_embeddings

    monkeypatch.setattr(fit, "RANK_BLOCK_BYTES", 1 << 20)
    vectors, labels = hidden_classes(classes=300, per_class=5, dim=8)
    items = from_labels(Vectors(np.arange(len(labels)).astype(str).astype(object), vectors, {},
                                np.array([str(l) for l in labels], dtype=object)))
    items.groups[:] = np.where(labels % 3 == 0, "tops", "shoes")
    if not same_sides:
        items.query[:] = np.arange(len(labels)) % 5 < 2
        items.gallery[:] = ~items.query
    pairs = validation_pairs(items, np.random.default_rng(0), limit=200)
    tracemalloc.start()
    try:
        figures, _ = evaluate_embeddings(vectors, items, pairs)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < 24, f"validation ranking peaked at {peak:.1f} MiB"
    assert figures["top1"] == pytest.approx(_brute_force_top(vectors, items, 1))
    assert figures["top10"] == pytest.approx(_brute_force_top(vectors, items, 10))


@pytest.mark.parametrize("in_class", [0.0, 1.0])
def test_pair_batches_with_no_partner_of_one_kind(in_class):
    """Regression: a batch that drew no in-category negative (every batch with in_class 0) raised IndexError,
    because the empty key list became a float array."""
    from embeddings.learning.samplers import PairSampler

    vectors, labels = hidden_classes(classes=6, per_class=4)
    items = from_labels(Vectors(np.arange(len(labels)).astype(str).astype(object), vectors, {},
                                np.array([str(l) for l in labels], dtype=object)))
    sampler = PairSampler(items, batch_size=8, negatives=1.0, in_class=in_class)
    rng = np.random.default_rng(0)
    for _ in range(5):
        (anchors, partners), matching = sampler.batch(rng)
        assert anchors.shape == partners.shape == (8, vectors.shape[1])
        assert matching[:4].tolist() == [1.0] * 4 and matching[4:].tolist() == [0.0] * 4
