import numpy as np
import pytest
from PIL import Image

from downloader import BBox, ImageError
from embeddings import Extractor, WeightsUnavailableError
from tests.conftest import encode, make_image


def test_vgg19_vectors_equal_keras_own_model_cut_at_fc2(tmp_path):
    """The default extractor gives what Keras' VGG19 gives at fc2, for the same weights and image."""
    import keras

    reference = keras.applications.VGG19(weights=None)
    weights = tmp_path / "vgg19.weights.h5"
    reference.save_weights(weights)
    fc2 = keras.Model(reference.input, reference.get_layer("fc2").output)

    paths = [tmp_path / "a.jpg", tmp_path / "b.png"]
    make_image(300, 200, seed=3).save(paths[0], quality=95)
    make_image(120, 180, seed=4).save(paths[1])
    resized = [np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR),
                          dtype=np.float32) for p in paths]
    expected = fc2.predict(keras.applications.vgg19.preprocess_input(np.stack(resized)), verbose=0)

    extractor = Extractor("vgg19", weights=weights, batch_size=2)
    assert extractor.dim == 4096
    assert extractor.describe()["layer"] == "fc2" and extractor.describe()["weights"].startswith("sha256:")
    np.testing.assert_allclose(extractor.embed(paths), expected, rtol=1e-4, atol=1e-4)
    batch = next(extractor.batches([("a", paths[0]), ("b", paths[1])]))
    np.testing.assert_allclose(batch.vectors, expected, rtol=1e-4, atol=1e-4)


def test_imagenet_download_failure_names_the_way_out(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError, match=r"--weights PATH"):
        Extractor("mobilenet_v2", weights="imagenet")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file does not exist"):
        Extractor("vgg19", weights=tmp_path / "nope.h5")


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg11'.*mobilenet_v2"):
        Extractor("vgg11")


def test_random_weights_are_the_same_in_every_extractor(tiny_extractor):
    from tests.conftest import TINY

    again = Extractor(TINY, weights=None)
    picture = make_image(40, 40)
    np.testing.assert_array_equal(tiny_extractor.embed([picture]), again.embed([picture]))


def test_paths_pil_and_arrays_give_the_same_vector(tiny_extractor, tmp_path):
    picture = make_image(50, 40)
    path = tmp_path / "p.png"
    picture.save(path)
    vectors = tiny_extractor.embed([path, picture, np.asarray(picture)])
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], rtol=1e-5)


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "GIF")])
def test_odd_image_modes_are_embedded(tiny_extractor, tmp_path, mode, fmt):
    path = tmp_path / f"odd.{fmt.lower()}"
    path.write_bytes(encode(make_image(40, 30).convert(mode), fmt))
    assert tiny_extractor.embed([path]).shape == (1, 8)


def test_exif_rotation_is_applied_before_embedding(tiny_extractor, tmp_path):
    upright = make_image(40, 30)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera stores a portrait shot
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(stored, "JPEG", quality=100, exif=exif.tobytes()))
    plain = tmp_path / "upright.jpg"
    plain.write_bytes(encode(upright, "JPEG", quality=100))
    rotated_vec, upright_vec = tiny_extractor.embed([path, plain])
    np.testing.assert_allclose(rotated_vec, upright_vec, rtol=0.05, atol=0.05)


def test_bbox_crops_before_resizing(tiny_extractor):
    picture = make_image(80, 60)
    box = BBox(10, 5, 30, 20)
    cropped = picture.crop((10, 5, 40, 25))
    np.testing.assert_allclose(tiny_extractor.embed([picture], [box]), tiny_extractor.embed([cropped]), rtol=1e-5)


def test_unreadable_images_are_skipped_and_reported(tiny_extractor, tmp_path):
    good = tmp_path / "good.jpg"
    make_image().save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<html>not an image</html>")
    items = [("g1", good), ("bad", broken), ("missing", tmp_path / "missing.jpg"), ("g2", good)] * 3
    batches = list(tiny_extractor.batches(items))
    ids = [key for batch in batches for key in batch.ids]
    failures = dict(f for batch in batches for f in batch.failures)
    assert ids == ["g1", "g2"] * 3
    assert "not an image" in failures["bad"] and "no such image file" in failures["missing"]
    assert all(batch.vectors.shape == (len(batch.ids), 8) for batch in batches)


def test_embed_raises_naming_the_bad_file(tiny_extractor, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encode(make_image(100, 100))[:200])
    with pytest.raises(ImageError, match="broken.jpg: truncated or corrupt"):
        tiny_extractor.embed([broken])


def test_the_model_takes_uint8_pixels_and_preprocesses_inside(tiny_extractor, tmp_path):
    """Batches travel as uint8; the backbone's preprocess_input is the model's first step."""
    import keras

    from tests.conftest import tiny_model

    picture = make_image(50, 40)
    pixels = tiny_extractor.prepare(picture)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    assert tiny_extractor.model.inputs[0].dtype == "uint8"
    full = tiny_model()
    full.set_weights([w.numpy() for w in tiny_extractor.model.get_layer("tiny_features").weights]
                     + [w.numpy() for w in full.weights[-2:]])
    cut = keras.Model(full.input, full.get_layer("features").output)
    expected = cut.predict(keras.applications.vgg19.preprocess_input(pixels[None].astype(np.float32)), verbose=0)
    np.testing.assert_allclose(tiny_extractor.predict(pixels[None]), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_computes_in_bfloat16_stores_float32_and_stays_close():
    import keras

    from tests.conftest import TINY

    pictures = [make_image(60, 50, seed=seed) for seed in range(6)]
    single = Extractor(TINY, weights=None)
    half = Extractor(TINY, weights=None, precision="bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the policy was set only while building
    assert half.describe()["precision"] == "bfloat16" and single.describe()["precision"] == "float32"
    assert half.model.get_layer("tiny_features").get_layer("conv").compute_dtype == "bfloat16"
    assert half.model.get_layer("preprocess_input").compute_dtype == "float32"
    a, b = single.embed(pictures), half.embed(pictures)
    assert b.dtype == np.float32 and not np.array_equal(a, b)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99


def test_fast_decoding_is_recorded_and_bad_options_are_named():
    from tests.conftest import TINY

    assert Extractor(TINY, weights=None, decode="fast").describe()["decode"] == "fast"
    with pytest.raises(ValueError, match=r"decode must be one of \['exact', 'fast'\], got 'quick'"):
        Extractor(TINY, weights=None, decode="quick")
    with pytest.raises(ValueError, match=r"precision must be one of .*, got 'half'"):
        Extractor(TINY, weights=None, precision="half")
