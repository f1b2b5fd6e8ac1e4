"""End-to-end training of the tower: it learns what raw pixels miss, writes its folder whole, resumes."""

import json

import numpy as np
import pytest

from embeddings.finetune import main
from embeddings.learning import checkpoint
from embeddings.learning.finetuning import FinetuneConfig, finetune
from embeddings.learning.head import HeadConfig
from embeddings.learning.tower import TowerConfig

from .generated import product_manifest, stripe_classes, write_idx_set

SMALL = TowerConfig("small-cnn", weights=None, head=HeadConfig(hidden=(64,), dim=16, dropout=0.0))


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return write_idx_set(tmp_path_factory.mktemp("idx"), stripe_classes(100, seed=0), stripe_classes(20, seed=1))


def test_tower_from_scratch_separates_classes_raw_pixels_do_not(tmp_path, stripes):
    config = FinetuneConfig(out=tmp_path / "tower", fashion_mnist=stripes, tower=SMALL, epochs=4, steps_per_epoch=40,
                            batch_size=48, val_fraction=0.25)
    result = finetune(config)
    assert result.raw["top1"] < 0.75 and result.raw["pair_accuracy"] < 0.6  # measured 0.65 and 0.51
    assert result.val["top1"] > result.raw["top1"] + 0.2  # measured 0.98
    assert result.val["pair_accuracy"] > result.raw["pair_accuracy"] + 0.25  # measured 0.94
    assert result.test is not None and result.test["top1"] > 0.85  # the t10k file, never trained on
    folder = tmp_path / "tower"
    assert {p.name for p in folder.iterdir()} == {"model.keras", "config.json", "history.json", "training.png"}
    history = json.loads((folder / "history.json").read_text())
    assert set(history) == {"loss", "seconds", "val_top1", "val_top10", "val_pair_accuracy"}
    assert len(history["loss"]) == result.epochs_run == 4
    written = json.loads((folder / "config.json").read_text())
    assert written["tower"]["backbone"] == "small-cnn" and written["data"]["test_items"] == 120
    assert 0 < written["calibration"]["threshold"] < 2 and not checkpoint.partial_folder(folder).exists()


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path, stripes, monkeypatch):
    config = FinetuneConfig(out=tmp_path / "tower", fashion_mnist=stripes, tower=SMALL, epochs=3, steps_per_epoch=3,
                            batch_size=24, val_fraction=0.25, eval_limit=60)
    straight = finetune(FinetuneConfig(**{**config.__dict__, "out": tmp_path / "straight"}))
    saved = checkpoint.EpochCheckpoint._save

    def killed_after_two(self, improved):
        saved(self, improved)
        if self.state.epochs_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.EpochCheckpoint, "_save", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        finetune(config)
    partial = checkpoint.partial_folder(config.out)
    assert (partial / "checkpoint").is_dir() and not config.out.exists()
    first = json.loads((partial / "checkpoint" / "state.json").read_text())
    assert first["epochs_done"] == 2
    monkeypatch.setattr(checkpoint.EpochCheckpoint, "_save", saved)
    with pytest.raises(ValueError, match="other settings.*margin"):
        finetune(FinetuneConfig(**{**config.__dict__, "margin": 0.5}))
    resumed = finetune(config)
    history = json.loads((config.out / "history.json").read_text())
    assert resumed.epochs_run == 3 and history["val_top1"][:2] == first["history"]["val_top1"]
    reference = json.loads((tmp_path / "straight" / "history.json").read_text())
    np.testing.assert_allclose(history["loss"], reference["loss"], rtol=1e-3)  # optimizer state restored too
    assert not partial.exists()


def test_products_from_a_manifest_hold_out_products(tmp_path):
    manifest = product_manifest(tmp_path / "data")
    code = main(["--manifest", str(manifest), "--out", str(tmp_path / "tower"), "--backbone", "small-cnn",
                 "--input-size", "32", "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.34",
                 "--hidden", "16", "--dim", "8", "--quiet"])
    assert code == 0
    written = json.loads((tmp_path / "tower" / "config.json").read_text())
    data = written["data"]
    # 6 train products x 4 images; 2 held out for validation; the 2 test products' crops and shop photos.
    assert data["mode"] == "products" and data["train_items"] == 16 and data["val_items"] == 8
    assert data["test_items"] == 8 and written["test"] is not None


@pytest.mark.parametrize("argv, message", [
    (["--manifest", "missing.jsonl"], "missing.jsonl: manifest does not exist"),
    (["--images", "nowhere"], "nowhere: image folder does not exist"),
    (["--fashion-mnist", "nowhere"], "nowhere: Fashion-MNIST folder does not exist"),
    (["--images", ".", "--trainable", "2"], "trainable fraction must be in [0, 1], got 2.0"),
    (["--images", ".", "--backbone", "small-cnn", "--weights", "imagenet"], "small-cnn is trained from scratch"),
    (["--images", ".", "--margin", "-1"], "margin must be positive, got -1.0"),
    (["--images", ".", "--steps-per-epoch", "0"], "steps per epoch must be at least 1, got 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--out", "run", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and message in error


def test_a_folder_with_other_files_is_not_replaced(tmp_path, capsys, stripes):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["--fashion-mnist", str(stripes), "--backbone", "small-cnn", "--out", str(out), "--quiet"]) == 2
    assert "holds other files than a tower's (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_file_where_the_checkpoint_goes_is_named(tmp_path, capsys, stripes):
    (tmp_path / "run.partial").write_text("not a folder")
    argv = ["--fashion-mnist", str(stripes), "--backbone", "small-cnn", "--out", str(tmp_path / "run"), "--quiet",
            "--epochs", "1", "--steps-per-epoch", "1", "--eval-limit", "60"]
    assert main(argv) == 2
    assert f"{tmp_path / 'run.partial'}: exists and is not a folder" in capsys.readouterr().err


def test_fashion_mnist_trains_a_tower_of_another_input_size(tmp_path, stripes):
    argv = ["--fashion-mnist", str(stripes), "--backbone", "small-cnn", "--input-size", "32", "--out",
            str(tmp_path / "run"), "--quiet", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8",
            "--hidden", "8", "--dim", "4", "--eval-limit", "60"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["tower"]["input_size"] == [32, 32]


def class_folder(root, classes=3, per_class=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / f"class{label}/{index}.png")
    return root


def test_a_split_without_two_images_of_a_class_is_named_before_training(tmp_path, capsys):
    # 6 images a class: 1 held out for the test, 1 of the other 5 for validation: no matching pair to measure.
    images = class_folder(tmp_path / "images")
    argv = ["--images", str(images), "--backbone", "small-cnn", "--out", str(tmp_path / "run"), "--quiet",
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8", "--hidden", "8", "--dim", "4"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"{images}: the validation split has 3 images of 3 classes" in error
    assert main(argv + ["--val-fraction", "0.4"]) == 0  # 2 a class for validation; the test's 1 a class is skipped
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["test"] is None and written["data"]["test_items"] == 0
    assert "test, tower" not in capsys.readouterr().out
