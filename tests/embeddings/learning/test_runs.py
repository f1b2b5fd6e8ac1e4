"""The runs table over real run folders of embeddings.train and embeddings.finetune."""

import json

import numpy as np
import pytest

from embeddings import HeadConfig, TrainConfig, Vectors, train, write_vectors
from embeddings.learning.finetuning import FinetuneConfig, finetune
from embeddings.learning.run_table import read_run, sort_rows
from embeddings.learning.tower import TowerConfig
from embeddings.runs import main

from .generated import stripe_classes, write_idx_set


def labelled_cache(path, classes=6, per_class=12, dim=8):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.normal(size=(classes, dim))
    vectors = (centres[labels] + rng.normal(scale=0.5, size=(len(labels), dim))).astype(np.float32)
    attrs = {"backbone": "vgg19", "layer": "fc2", "weights": "random:0", "input_size": [224, 224], "dim": dim}
    write_vectors(path, Vectors(np.array([f"{i}.jpg" for i in range(len(labels))], dtype=object), vectors, attrs,
                                np.array([f"class{label}" for label in labels], dtype=object)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    labelled_cache(root / "v.h5")
    train(TrainConfig(vectors=root / "v.h5", out=root / "head", epochs=2, batch_size=32, val_fraction=0.25,
                      head=HeadConfig(hidden=(16,), dim=8, dropout=0.1), loss="contrastive"))
    idx = write_idx_set(root / "idx", stripe_classes(12, seed=0), stripe_classes(4, seed=1))
    finetune(FinetuneConfig(out=root / "tower", fashion_mnist=idx, epochs=3, steps_per_epoch=2, batch_size=16,
                            val_fraction=0.25, tower=TowerConfig("small-cnn", weights=None, augment=True,
                                                                 head=HeadConfig(hidden=(16,), dim=12, dropout=0.3))))
    return root


def test_rows_read_each_kind_of_run(runs):
    head, tower = read_run(runs / "head"), read_run(runs / "tower")
    assert (head["backbone"], head["trainable"], head["augment"], head["dropout"], head["dim"]) == (
        "vgg19", 0.0, "no", 0.1, 8)
    assert head["loss"] == "contrastive" and head["margin"] == 1.0 and head["epochs"] == 2
    assert (tower["backbone"], tower["trainable"], tower["augment"], tower["dropout"], tower["dim"]) == (
        "small-cnn", 1.0, "yes", 0.3, 12)
    assert tower["loss"] == "triplet (semi-hard)" and tower["margin"] == 0.2 and tower["epochs"] == 3
    history = json.loads((runs / "tower" / "history.json").read_text())
    best = max(range(3), key=lambda i: (history["val_top10"][i], -i))
    assert tower["top1"] == history["val_top1"][best] and tower["top10"] == history["val_top10"][best]
    assert tower["best_val_pair_accuracy"] == max(history["val_pair_accuracy"])


def test_markdown_table_sorted(runs, capsys):
    assert main([str(runs / "tower"), str(runs / "head"), "--sort", "dim"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| run | backbone | trainable | augment | dropout | loss (mining) | margin | dim |")
    assert len(lines) == 4 and lines[1].count("---") == 12
    assert lines[2].startswith(f"| {runs / 'tower'} | small-cnn | 1 | yes | 0.3 | triplet (semi-hard) | 0.2 | 12 | 3 |")
    assert lines[3].startswith(f"| {runs / 'head'} | vgg19 | 0 | no | 0.1 | contrastive | 1 | 8 | 2 |")


def test_sort_text_ascending_and_missing_last():
    rows = [{"backbone": "vgg19", "top1": None}, {"backbone": "small-cnn", "top1": 0.5}, {"backbone": "b", "top1": 0.9}]
    assert [r["backbone"] for r in sort_rows(rows, "backbone")] == ["b", "small-cnn", "vgg19"]
    assert [r["backbone"] for r in sort_rows(rows, "top1")] == ["b", "small-cnn", "vgg19"]
    with pytest.raises(ValueError, match="unknown column 'speed'"):
        sort_rows(rows, "speed")


def test_a_folder_that_is_not_a_run(tmp_path, runs, capsys):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "history.json").write_text("{}")
    assert main([str(runs / "head"), str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"error: {tmp_path}: not a run folder") and "unreadable JSON" in error
    assert main([str(tmp_path / "nothing")]) == 2
    assert "missing config.json or history.json" in capsys.readouterr().err


@pytest.mark.parametrize("config, history", [
    ({"training": 3}, {}),
    ({"training": {}, "tower": 5}, {}),
    ({"training": {}, "head": [1]}, {}),
    ({"training": {}}, {"loss": 3}),
    ({"training": {}}, {"loss": [0.5], "val_top10": ["a", None]}),
])
def test_json_of_another_shape_is_not_a_run(tmp_path, capsys, config, history):
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"error: {tmp_path}: not a run folder")
