"""The IDX reader against files made by hand with ``struct`` (not by any writer of ours)."""

import gzip
import struct

import numpy as np
import pytest

from embeddings.learning.fashion_mnist import FILES, IdxError, parse_idx, read_fashion_mnist, read_idx


def idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_ubyte_images_read_row_major():
    data = idx_bytes(0x08, (2, 2, 3), bytes(range(12)))
    array = parse_idx(data)
    assert array.dtype == np.uint8 and array.shape == (2, 2, 3)
    assert array[1, 0, 2] == 8 and array[0, 1, 0] == 3  # index (i, j, k) -> i*6 + j*3 + k


def test_big_endian_types_are_converted():
    data = idx_bytes(0x0B, (3,), struct.pack(">3h", -2, 300, 7))
    assert parse_idx(data).tolist() == [-2, 300, 7]
    data = idx_bytes(0x0D, (2,), struct.pack(">2f", 1.5, -0.25))
    assert parse_idx(data).tolist() == [1.5, -0.25]


@pytest.mark.parametrize("data, message", [
    (b"\x08\x03\x00\x00", "bad magic"),
    (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x07"),
    (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 5), "header needs 16 bytes"),
    (idx_bytes(0x08, (4, 28, 28), bytes(100)), "truncated: shape 4x28x28 needs 3152 bytes, the file has 116"),
    (idx_bytes(0x08, (2,), bytes(3)), "too long"),
])
def test_bad_content_is_named(data, message):
    with pytest.raises(IdxError, match=message):
        parse_idx(data, "x.idx")


def test_gzip_file_and_truncated_gzip(tmp_path):
    good = tmp_path / "labels-idx1-ubyte.gz"
    good.write_bytes(gzip.compress(idx_bytes(0x08, (5,), bytes([9, 1, 0, 3, 2]))))
    assert read_idx(good).tolist() == [9, 1, 0, 3, 2]
    cut = tmp_path / "cut-idx1-ubyte.gz"
    cut.write_bytes(good.read_bytes()[:-6])
    with pytest.raises(IdxError, match=f"{cut}: not a complete gzip file"):
        read_idx(cut)
    with pytest.raises(FileNotFoundError, match="IDX file does not exist"):
        read_idx(tmp_path / "missing.gz")


def write_set(folder, train=6, test=4, size=5, labels_short=False):
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (train, size, size), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, train - int(labels_short), dtype=np.uint8),
              "test_images": rng.integers(0, 256, (test, size, size), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, test, dtype=np.uint8)}
    for key, array in arrays.items():
        payload = idx_bytes(0x08, array.shape, array.tobytes())
        (folder / f"{FILES[key]}.gz").write_bytes(gzip.compress(payload))
    return arrays


def test_the_four_standard_files(tmp_path):
    arrays = write_set(tmp_path)
    data = read_fashion_mnist(tmp_path)
    for key, array in arrays.items():
        np.testing.assert_array_equal(getattr(data, key), array)


def test_mismatched_counts_and_missing_file(tmp_path):
    write_set(tmp_path, labels_short=True)
    with pytest.raises(IdxError, match="6 train images but 5 labels"):
        read_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte.gz"):
        read_fashion_mnist(tmp_path)


def test_command_reports_a_truncated_file_in_one_line(tmp_path, capsys):
    from embeddings.finetune import main

    write_set(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-10]))
    code = main(["--fashion-mnist", str(tmp_path), "--backbone", "small-cnn", "--out", str(tmp_path / "run"),
                 "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert error.startswith(f"error: {images}: truncated: shape 6x5x5 needs 166 bytes, the file has 156")


def test_splits_at_a_tower_input_size_are_resized_as_a_query_image_is(tmp_path):
    # A backbone's tower takes 32 x 40 (or 224 x 224), not Fashion-MNIST's 28 x 28: the images are resized the
    # way embeddings.build and queries resize an image file (PIL RGB, bilinear), lazily, batch by batch.
    from PIL import Image

    from embeddings.extraction.preprocess import load_pixels
    from embeddings.learning.pixel_data import fashion_mnist_splits

    from .generated import stripe_classes, write_idx_set

    folder = write_idx_set(tmp_path / "idx", stripe_classes(4, classes=3), stripe_classes(2, classes=3, seed=1))
    splits = fashion_mnist_splits(folder, (32, 40), 0.25, 0)
    first = np.asarray(splits.test.vectors[:3])
    assert first.shape == (3, 32, 40, 3) and first.dtype == np.uint8
    Image.fromarray(read_idx(folder / f"{FILES['test_images']}.gz")[0]).save(tmp_path / "first.png")
    np.testing.assert_array_equal(first[0], load_pixels(tmp_path / "first.png", (32, 40)))
    assert np.asarray(splits.train.vectors).shape == (len(splits.train), 32, 40, 3)
    native = fashion_mnist_splits(folder, (28, 28), 0.25, 0).test.vectors
    np.testing.assert_array_equal(np.asarray(native)[0], np.repeat(read_idx(
        folder / f"{FILES['test_images']}.gz")[0][..., None], 3, axis=-1))
