"""``--weights PATH`` with Keras' legacy ``vgg19_weights_tf_dim_ordering_tf_kernels.h5``, the file the README
tells users without internet to pass: built here from a ``weights=None`` VGG19 in that layout, loaded
through ``Extractor``, and compared weight by weight (VGG19 itself: it is the default backbone)."""

import h5py
import numpy as np

from embeddings import Extractor

LEGACY_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels.h5"


def write_legacy_weights(model, path) -> None:
    """The layout of Keras 2's ``save_weights`` to ``.h5`` (and of the files keras.applications downloads):
    root attributes ``layer_names`` (every layer, weights or not), ``backend`` and ``keras_version``; a group
    per layer with ``weight_names`` such as ``block1_conv1/kernel:0``, each a dataset at that path."""
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = handle.create_group(layer.name)
            names = [f"{layer.name}/{variable.name}:0" for variable in layer.weights]
            group.attrs["weight_names"] = np.array([name.encode() for name in names], dtype="S")
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name, data=value)


def test_extractor_loads_the_legacy_vgg19_weights_file(tmp_path):
    import keras

    source = keras.applications.VGG19(weights=None)
    path = tmp_path / LEGACY_NAME
    write_legacy_weights(source, path)
    with h5py.File(path, "r") as handle:  # the layout is the legacy one, not Keras 3's ``.weights.h5``
        assert "block1_conv1/block1_conv1/kernel:0" in handle and "layers" not in handle
        assert list(handle["flatten"].attrs["weight_names"]) == []

    extractor = Extractor("vgg19", weights=path)
    assert extractor.describe()["weights"].startswith("sha256:")
    cut = next(layer for layer in extractor.model.layers if isinstance(layer, keras.Model))
    compared = 0
    for layer in cut.layers:
        if not layer.weights:
            continue
        for loaded, expected in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(loaded, expected)
            compared += 1
    assert compared == 2 * 18  # 16 convolutions, fc1 and fc2: kernel and bias each

    pixels = np.random.default_rng(0).integers(0, 256, size=(1, 224, 224, 3), dtype=np.uint8)
    fc2 = keras.Model(source.inputs, source.get_layer("fc2").output)
    inputs = keras.applications.vgg19.preprocess_input(pixels.astype(np.float32))
    np.testing.assert_allclose(extractor.predict(pixels), fc2.predict_on_batch(inputs), rtol=1e-4, atol=1e-5)
