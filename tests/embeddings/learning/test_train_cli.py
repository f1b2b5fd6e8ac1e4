"""``embeddings.train`` from a manifest (the main mode), early stopping, resume, an atomic head folder, main()."""

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from common import WriterLock
from embeddings import HeadConfig, TrainConfig, Vectors, load_head, train, write_vectors
from embeddings.learning import checkpoint as checkpoint_module
from embeddings.learning.samplers import from_manifest_cache
from embeddings.train import main
from tests.embeddings.learning.test_train import hidden_classes, write_labelled

ROOT = Path(__file__).resolve().parents[3]
ATTRS = {"backbone": "vgg19", "layer": "fc2", "weights": "random:0", "input_size": [224, 224]}


def product_data(tmp_path, products=24, per_side=3, extra_rows=0, bad_lines=(), dim=32):
    """A cache and a manifest: each product has ``per_side`` street crops and shop photos in one of two
    categories; vectors differ by product only in a few dimensions (``hidden_classes``)."""
    vectors, labels = hidden_classes(classes=products, per_class=2 * per_side, dim=dim)
    ids, lines = [], []
    for row, product in enumerate(labels):
        kind = "street" if row % (2 * per_side) < per_side else "shop"
        path = f"{kind}/{row}.jpg"
        ids.append(path)
        line = {"path": path, "kind": kind, "photo": row, "product": int(product),
                "category": ["tops", "shoes"][product % 2]}
        lines.append(dict(line, split="train") if kind == "street" else line)
    if extra_rows:  # rows the manifest does not name (other shards, other splits)
        ids += [f"other/{i}.jpg" for i in range(extra_rows)]
        vectors = np.concatenate([vectors, np.ones((extra_rows, vectors.shape[1]), np.float32)])
    write_vectors(tmp_path / "v.h5", Vectors(np.array(ids, dtype=object), vectors, dict(ATTRS, dim=vectors.shape[1])))
    text = [json.dumps(line) for line in lines]
    for index, bad in bad_lines:
        text.insert(index, bad)
    (tmp_path / "manifest.jsonl").write_text("\n".join(text) + "\n")
    return vectors, labels


def quick(tmp_path, **kw) -> TrainConfig:
    kw.setdefault("head", HeadConfig(hidden=(64,), dim=16, dropout=0.0, seed=0))
    kw.setdefault("epochs", 4)
    kw.setdefault("patience", 25)
    kw.setdefault("learning_rate", 3e-3)
    return TrainConfig(vectors=tmp_path / "v.h5", out=tmp_path / "head", batch_size=48, val_fraction=0.25, **kw)


def test_training_from_a_manifest_holds_out_products_and_skips_bad_lines(tmp_path):
    bad = [(0, "not json at all"), (3, json.dumps({"path": "street/x.jpg", "photo": 1, "product": 1})),
           (5, json.dumps({"path": "../escape.jpg", "kind": "shop", "photo": 2, "product": 0, "category": "tops"}))]
    product_data(tmp_path, products=30, bad_lines=bad)
    result = train(quick(tmp_path, manifest=tmp_path / "manifest.jsonl", epochs=8, steps_per_epoch=10))
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    data = config["data"]
    assert data["mode"] == "products" and data["train_items"] + data["val_items"] == 30 * 6
    assert data["val_labels"] == 8 and data["train_labels"] == 22  # whole products held out
    assert data["val_queries"] == data["val_gallery"] == 8 * 3
    assert result.raw["top1"] < 0.4 and result.head["top1"] > result.raw["top1"] + 0.15  # measured 0.33, 0.58
    with pytest.raises(ValueError, match=r"manifest.jsonl:1: not JSON"):
        train(quick(tmp_path, manifest=tmp_path / "manifest.jsonl", strict_manifest=True, restart=True))


def test_manifest_training_reads_only_the_rows_it_needs(tmp_path):
    vectors, labels = product_data(tmp_path, products=8, extra_rows=5000, dim=1024)  # 20 MiB not needed
    tracemalloc.start()
    try:
        items, attrs = from_manifest_cache(tmp_path / "v.h5", tmp_path / "manifest.jsonl")
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert len(items) == 48 and attrs["backbone"] == "vgg19"
    np.testing.assert_array_equal(items.vectors[items.query], vectors[:48][np.arange(48) % 6 < 3])
    assert peak < 4, f"{peak:.1f} MiB"  # the ids are read (5,048 strings), not the 20 MiB of vectors


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    vectors, labels = hidden_classes(classes=6, per_class=12)
    write_labelled(tmp_path / "v.h5", vectors, labels)
    result = train(quick(tmp_path, epochs=12, patience=2, learning_rate=0.05))
    history = json.loads((tmp_path / "head" / "history.json").read_text())
    best = result.best_epoch
    assert result.epochs_run == len(history["loss"]) == best + 2 < 12  # stopped two epochs after the best
    assert history["val_top10"][best - 1] == max(history["val_top10"])
    last = {key: history[f"val_{key}"][-1] for key in ("top1", "pair_accuracy")}
    assert last != {key: history[f"val_{key}"][best - 1] for key in last}, history  # the last epoch differs
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["best_epoch"] == best
    for key in ("top1", "top10", "pair_accuracy"):  # the head written is the best epoch's, not the last one's
        assert result.head[key] == pytest.approx(history[f"val_{key}"][best - 1], abs=1e-9)


KILLED = textwrap.dedent("""
    import os, sys
    from embeddings.learning import checkpoint
    original = checkpoint.EpochCheckpoint.on_epoch_end
    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            os._exit(9)  # killed right after its second epoch was checkpointed
    checkpoint.EpochCheckpoint.on_epoch_end = on_epoch_end
    from embeddings.train import main
    sys.exit(main(sys.argv[1:]))
""")


def _argv(tmp_path, out="head", epochs=4, seed=0):
    return ["--vectors", str(tmp_path / "v.h5"), "--out", str(tmp_path / out), "--hidden", "64", "--dim", "16",
            "--dropout", "0", "--epochs", str(epochs), "--batch-size", "48", "--learning-rate", "3e-3",
            "--val-fraction", "0.25", "--patience", "25", "--seed", str(seed), "--quiet"]


def test_a_killed_run_resumes_from_its_last_finished_epoch(tmp_path, monkeypatch, capsys):
    vectors, labels = hidden_classes(classes=6, per_class=12)
    write_labelled(tmp_path / "v.h5", vectors, labels)
    assert main(_argv(tmp_path, out="whole")) == 0  # the same run, never stopped
    killed = subprocess.run([sys.executable, "-c", KILLED] + _argv(tmp_path), cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert not (tmp_path / "head").exists()  # nothing published: no half-written head
    state = json.loads((tmp_path / "head.partial" / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 2 and len(state["history"]["loss"]) == 2
    trained = []
    original = checkpoint_module.EpochCheckpoint.on_epoch_end
    monkeypatch.setattr(checkpoint_module.EpochCheckpoint, "on_epoch_end",
                        lambda self, epoch, logs=None: (trained.append(epoch), original(self, epoch, logs)))
    assert main(_argv(tmp_path)) == 0  # the same command again: takes over the dead run's lock, resumes
    assert trained == [2, 3]
    history = json.loads((tmp_path / "head" / "history.json").read_text())
    reference = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert len(history["loss"]) == 4
    np.testing.assert_allclose(history["loss"], reference["loss"], rtol=1e-4)
    np.testing.assert_allclose(history["val_top1"], reference["val_top1"], atol=1e-9)
    assert not (tmp_path / "head.partial").exists()


def test_an_interrupted_run_with_other_settings_is_refused_until_restart(tmp_path, monkeypatch, capsys):
    vectors, labels = hidden_classes(classes=6, per_class=12)
    write_labelled(tmp_path / "v.h5", vectors, labels)
    original = checkpoint_module.EpochCheckpoint.on_epoch_end

    def interrupt(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.EpochCheckpoint, "on_epoch_end", interrupt)
    assert main(_argv(tmp_path)) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(checkpoint_module.EpochCheckpoint, "on_epoch_end", original)
    assert main(_argv(tmp_path, seed=1)) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {tmp_path / 'head.partial'}: holds an interrupted run with other settings")
    assert "seed: 0 then, 1 now" in message and "--restart" in message and "\n" not in message
    assert main(_argv(tmp_path, seed=1, epochs=2) + ["--restart"]) == 0
    assert len(json.loads((tmp_path / "head" / "history.json").read_text())["loss"]) == 2


def test_the_head_folder_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """Regression: model.keras, config.json and history.json were renamed one by one, so a stop in
    between paired a new model with the old calibration."""
    vectors, labels = hidden_classes(classes=6, per_class=12)
    write_labelled(tmp_path / "v.h5", vectors, labels)
    train(quick(tmp_path, epochs=2))
    before = {p.name: p.read_bytes() for p in (tmp_path / "head").iterdir()}
    import embeddings.learning.plots as plots

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "plot_training", fail)
    with pytest.raises(OSError, match="disk full"):
        train(quick(tmp_path, epochs=2, head=HeadConfig(hidden=(32,), dim=8, dropout=0.0, seed=1)))
    assert {p.name: p.read_bytes() for p in (tmp_path / "head").iterdir()} == before
    assert load_head(tmp_path / "head").dim == 16


def test_main_good_run_prints_the_figures(tmp_path, capsys):
    product_data(tmp_path, products=12)
    assert main(_argv(tmp_path, epochs=2) + ["--manifest", str(tmp_path / "manifest.jsonl")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("validation") and lines[1].startswith("raw vectors")
    assert lines[-1].startswith("best epoch ") and lines[-1].endswith(f"head written to {tmp_path / 'head'}")
    assert json.loads((tmp_path / "head" / "config.json").read_text())["data"]["mode"] == "products"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_main_bad_inputs_are_one_line_exit_2(tmp_path, capsys):
    argv = _argv(tmp_path, epochs=1)
    assert _error(capsys, argv) == f"error: {tmp_path / 'v.h5'}: vector cache does not exist"
    product_data(tmp_path, products=8, bad_lines=[(2, '{"path": "street/0.jpg", "photo": 0}')])
    assert _error(capsys, argv + ["--manifest", str(tmp_path / "nope.jsonl")]) == \
        f"error: {tmp_path / 'nope.jsonl'}: manifest does not exist"
    assert _error(capsys, argv + ["--manifest", str(tmp_path / "manifest.jsonl"), "--strict"]) == \
        f"error: {tmp_path / 'manifest.jsonl'}:3: 'kind' must be 'street' or 'shop', got None"
    assert _error(capsys, argv).startswith(f"error: {tmp_path / 'v.h5'}: has no labels")
    (tmp_path / "other.jsonl").write_text(json.dumps({"path": "street/none.jpg", "kind": "street", "photo": 1,
                                                      "product": 1, "category": "tops", "split": "train"}) + "\n")
    assert "no train street crop has both a vector and a shop photo" in _error(
        capsys, argv + ["--manifest", str(tmp_path / "other.jsonl")])
    (tmp_path / "file").write_text("x")
    assert "exists and is not a folder" in _error(capsys, argv[:3] + [str(tmp_path / "file")] + argv[4:])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "holds other files than a head's (notes.txt)" in _error(capsys, argv[:3] + [str(tmp_path / "busy")]
                                                                   + argv[4:])
    with WriterLock(tmp_path / "head"):
        assert "another run is writing it: pid" in _error(capsys, argv + ["--manifest", str(tmp_path / "manifest.jsonl")])
    assert _error(capsys, argv + ["--batch-size", "1"]) == "error: need epochs >= 1 and batch size >= 2, got 1, 1"


def test_a_checkpoint_path_that_is_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """Regression: ``OUT.partial`` being a file failed after the first epoch with '[Errno 17] File exists'
    (and ``--restart`` with NotADirectoryError), after the time spent training."""
    vectors, labels = hidden_classes(classes=6, per_class=12)
    write_labelled(tmp_path / "v.h5", vectors, labels)
    (tmp_path / "head.partial").write_text("not a checkpoint")
    trained = []
    monkeypatch.setattr(checkpoint_module.EpochCheckpoint, "on_epoch_end", lambda *a, **k: trained.append(a))
    for extra in ([], ["--restart"]):
        assert _error(capsys, _argv(tmp_path, epochs=1) + extra) == (
            f"error: {tmp_path / 'head.partial'}: exists and is not a folder (where {tmp_path / 'head'} keeps its "
            f"checkpoint); move it away or choose another --out")
    assert trained == [] and (tmp_path / "head.partial").read_text() == "not a checkpoint"
    assert not (tmp_path / "head").exists() and not (tmp_path / "head.lock").exists()
