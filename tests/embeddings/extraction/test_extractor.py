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
