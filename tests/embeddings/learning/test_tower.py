"""The tower: which layers learn, BatchNorm frozen and in inference mode, the in-graph scaling, saving."""

import json

import keras
import numpy as np
import pytest

from embeddings.learning.augment import build_augmentation
from embeddings.learning.head import HeadConfig
from embeddings.learning.layers import PixelScaling
from embeddings.learning.tower import TowerConfig, build_tower, learning_layers, load_tower, tower_settings

SMALL_HEAD = HeadConfig(hidden=(16,), dim=8, dropout=0.0, batch_norm=False)


def trunk_of(tower):
    return next(layer for layer in tower.layers if isinstance(layer, keras.Model)
                and layer.name not in ("augment", "siamese_head"))


def test_vgg19_top_30_percent_trainable():
    # VGG19 cut at fc2: 16 convolutions + fc1 + fc2 = 18 layers with weights; round(0.3 * 18) = 5.
    tower = build_tower(TowerConfig("vgg19", weights=None, trainable=0.3, head=SMALL_HEAD))
    trunk = trunk_of(tower)
    assert len(learning_layers(trunk)) == 18
    assert [layer.name for layer in trunk.layers if layer.trainable] == [
        "block5_conv2", "block5_conv3", "block5_conv4", "fc1", "fc2"]
    frozen = [layer for layer in trunk.layers if layer.weights and not layer.trainable]
    assert len(frozen) == 13 and frozen[0].name == "block1_conv1"


def test_mobilenet_v2_batch_norm_stays_frozen():
    # MobileNetV2: Conv1, the first block's depthwise + project, 16 blocks of expand + depthwise + project,
    # Conv_1: 52 layers with weights besides BatchNorm; round(0.3 * 52) = 16 = Conv_1 + blocks 12-16.
    tower = build_tower(TowerConfig("mobilenet_v2", weights=None, trainable=0.3, head=SMALL_HEAD, input_size=(32, 32)))
    trunk = trunk_of(tower)
    trainable = [layer.name for layer in trunk.layers if layer.trainable]
    assert len(learning_layers(trunk)) == 52 and len(trainable) == 16
    assert trainable[0] == "block_12_expand" and trainable[-1] == "Conv_1"
    norms = [layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 52 and not any(layer.trainable for layer in norms)


def test_fine_tuning_step_changes_only_the_top_and_keeps_batch_norm_statistics():
    tower = build_tower(TowerConfig("mobilenet_v2", weights=None, trainable=0.3, head=SMALL_HEAD, input_size=(32, 32)))
    trunk = trunk_of(tower)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    # Inference mode: with no dropout or BatchNorm in the head, training=True gives the same embeddings.
    np.testing.assert_allclose(tower(pixels, training=True), tower(pixels, training=False), atol=1e-5)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in trunk.layers if layer.weights}
    tower.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    tower.fit(pixels, np.ones((8, 8), np.float32), epochs=1, batch_size=8, verbose=0)
    changed = {name for name, weights in before.items()
               if any(not np.array_equal(a, b) for a, b in zip(weights, trunk.get_layer(name).get_weights()))}
    assert "Conv_1" in changed and "block_16_project" in changed
    assert changed <= {layer.name for layer in trunk.layers if layer.trainable}  # no frozen layer, no BN statistic


@pytest.mark.parametrize("mode, application", [("caffe", "vgg19"), ("tf", "mobilenet_v2")])
def test_pixel_scaling_equals_keras_preprocess_input(mode, application):
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    expected = getattr(keras.applications, application).preprocess_input(pixels.copy())
    np.testing.assert_allclose(PixelScaling(mode)(pixels), expected, rtol=1e-6, atol=1e-4)


def test_grey_scaling_is_luma():
    pixels = np.random.default_rng(2).uniform(0, 255, (1, 3, 3, 3)).astype(np.float32)
    luma = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    np.testing.assert_allclose(np.asarray(PixelScaling("unit", grey=True)(pixels))[..., 0], luma / 255, rtol=1e-5)


def test_augmentation_reproducible_with_a_seed_and_identity_at_inference():
    pixels = np.random.default_rng(3).uniform(0, 255, (4, 24, 24, 3)).astype(np.float32)
    first, again, other = build_augmentation(seed=7), build_augmentation(seed=7), build_augmentation(seed=8)
    augmented = np.asarray(first(pixels, training=True))
    assert not np.allclose(augmented, pixels, atol=1.0)
    np.testing.assert_array_equal(augmented, np.asarray(again(pixels, training=True)))
    assert not np.allclose(augmented, np.asarray(other(pixels, training=True)))
    np.testing.assert_array_equal(np.asarray(first(pixels, training=False)), pixels)


def test_augmented_tower_embeds_like_the_plain_one_at_inference():
    config = TowerConfig("small-cnn", weights=None, head=SMALL_HEAD, seed=3)
    pixels = np.random.default_rng(4).integers(0, 256, (5, 28, 28, 3)).astype(np.float32)
    plain, augmented = build_tower(config), build_tower(TowerConfig(**{**config.__dict__, "augment": True}))
    np.testing.assert_allclose(augmented.predict(pixels, verbose=0), plain.predict(pixels, verbose=0), atol=1e-6)


def test_small_cnn_shape_and_settings_checked():
    tower = build_tower(TowerConfig("small-cnn", weights=None))
    assert tuple(tower.input.shape[1:]) == (28, 28, 3) and tower.output.shape[-1] == 128
    convolutions = [layer for layer in trunk_of(tower).layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 4
    assert [type(layer).__name__ for layer in tower.get_layer("siamese_head").layers].count("Dense") == 2
    with pytest.raises(ValueError, match="small-cnn is trained from scratch"):
        TowerConfig("small-cnn", weights=None, trainable=0.5).validate()
    with pytest.raises(ValueError, match="trainable fraction must be in"):
        TowerConfig("vgg19", trainable=1.5).validate()


def test_saved_tower_loads_with_its_identity(tmp_path):
    config = TowerConfig("small-cnn", weights=None, head=SMALL_HEAD, augment=True)
    tower = build_tower(config)
    written = {"format": "street2shop-tower/1", "tower": tower_settings(config)}
    (tmp_path / "config.json").write_text(json.dumps(written))
    tower.save(tmp_path / "model.keras")
    loaded = load_tower(tmp_path)
    pixels = np.random.default_rng(5).integers(0, 256, (3, 28, 28, 3)).astype(np.uint8)
    np.testing.assert_allclose(loaded.embed(pixels), tower.predict(pixels.astype(np.float32), verbose=0), atol=1e-6)
    assert loaded.identity["backbone"] == "tower:small-cnn" and loaded.identity["dim"] == 8
    assert loaded.identity["input_size"] == [28, 28] and loaded.identity["weights"].startswith("sha256:")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a readable tower"):
        load_tower(tmp_path)
