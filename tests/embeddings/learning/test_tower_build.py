"""Embedding with a trained tower: ``embeddings.build --model``, its identity in the cache, queries through it."""

import numpy as np
import pytest

from embeddings.extraction.cache import CacheError, read_vectors
from embeddings.extraction.pipeline import BuildConfig, build
from embeddings.extraction.preprocess import load_pixels
from embeddings.learning.finetuning import FinetuneConfig, finetune
from embeddings.learning.head import HeadConfig, file_hash
from embeddings.learning.tower import TowerConfig, load_tower
from embeddings.learning.tower_extractor import TowerExtractor

from .generated import product_manifest, stripe_classes, write_idx_set


def small_tower(root, dim, seed):
    idx = write_idx_set(root / "idx", stripe_classes(12, seed=0), stripe_classes(4, seed=1))
    finetune(FinetuneConfig(out=root / f"tower{seed}", fashion_mnist=idx, epochs=1, steps_per_epoch=2, batch_size=16,
                            val_fraction=0.25, seed=seed, tower=TowerConfig(
                                "small-cnn", weights=None, head=HeadConfig(hidden=(16,), dim=dim), seed=seed)))
    return root / f"tower{seed}"


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return small_tower(root, 12, 0), small_tower(root, 12, 1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return product_manifest(tmp_path_factory.mktemp("sample"), products=4, test_products=1, size=40)


def test_build_embeds_with_the_tower(tmp_path, towers, sample):
    tower = towers[0]
    summary = build(BuildConfig(out=tmp_path / "v.h5", manifest=sample, workers=1),
                    extractor=TowerExtractor(tower, batch_size=4, workers=1))
    assert summary.computed == 16 and not summary.failures
    cached = read_vectors(tmp_path / "v.h5")
    assert cached.vectors.shape == (16, 12)  # the tower's dimension, not a backbone's
    np.testing.assert_allclose(np.linalg.norm(cached.vectors, axis=1), 1.0, atol=1e-5)
    loaded = load_tower(tower)
    first = sample.parent / cached.ids[0]
    np.testing.assert_allclose(cached.vectors[0], loaded.embed(load_pixels(first, (28, 28))[None])[0], atol=1e-5)
    attrs = cached.attrs
    assert attrs["backbone"] == "tower:small-cnn" and attrs["layer"] == "embedding" and attrs["dim"] == 12
    assert attrs["weights"] == file_hash(tower / "model.keras") and attrs["input_size"] == [28, 28]


def test_another_tower_cannot_extend_the_cache(tmp_path, towers, sample):
    config = BuildConfig(out=tmp_path / "v.h5", manifest=sample, workers=1)
    build(config, extractor=TowerExtractor(towers[0], workers=1))
    with pytest.raises(CacheError, match="weights: expected"):
        build(config, extractor=TowerExtractor(towers[1], workers=1))


def test_build_command_with_model_then_index_and_query(tmp_path, towers, sample, capsys):
    import json

    from embeddings.build import main as build_main
    from retrieval import SearchEngine, build_index

    cache = tmp_path / "v.h5"
    assert build_main(["--manifest", str(sample), "--model", str(towers[0]), "--out", str(cache),
                       "--workers", "1", "--quiet"]) == 0
    cached = read_vectors(cache)
    assert cached.vectors.shape == (16, 12) and cached.attrs["backbone"] == "tower:small-cnn"
    build_index(cache, sample, tmp_path / "index.h5")
    engine = SearchEngine.load(tmp_path / "index.h5")
    products = {r["path"]: r["product"] for r in map(json.loads, sample.read_text().splitlines())}
    shop = next(key for key in cached.ids if key.startswith("shop/"))
    best = engine.search(sample.parent / shop, k=1)[0]  # the query is embedded by the tower the index names
    assert best.product == products[shop] and best.distance < 1e-3
    assert engine.extractor.describe()["weights"] == file_hash(towers[0] / "model.keras")
    assert build_main(["--manifest", str(sample), "--model", str(towers[1]), "--out", str(cache), "--quiet"]) == 2
    assert "weights: expected" in capsys.readouterr().err
    assert build_main(["--manifest", str(sample), "--model", str(towers[0]), "--out", str(tmp_path / "w.h5"),
                       "--precision", "bfloat16", "--quiet"]) == 2
    assert "--model computes in float32" in capsys.readouterr().err
