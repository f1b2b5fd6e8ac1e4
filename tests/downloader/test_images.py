import io
import warnings

import numpy as np
import pytest
from PIL import Image

from downloader import BBox, ImageError
from downloader import images
from tests.conftest import encode, make_image
from tests.downloader.bombs import bomb_png


@pytest.mark.parametrize("data, reason", [
    (b"", "empty body"),
    (b"<!DOCTYPE html><html><body>gone</body></html>", "an HTML page"),
    (b"plain text, not an image", "not an image"),
])
def test_decode_rejects_non_images(data, reason):
    with pytest.raises(ImageError, match=reason):
        images.decode(data)


def test_decode_rejects_truncated_jpeg():
    data = encode(make_image(200, 150))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        images.decode(data[: len(data) // 2])


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA"])
def test_any_mode_becomes_rgb(mode):
    picture = make_image().convert(mode)
    decoded = images.decode(encode(picture, "PNG" if mode != "CMYK" else "JPEG"))
    rgb = images.to_rgb(decoded)
    assert rgb.mode == "RGB" and rgb.size == picture.size
    assert np.array_equal(np.asarray(rgb), np.asarray(decoded.convert("RGB")))  # opaque: Pillow's own conversion


def test_transparent_pixels_become_white():
    picture = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert images.to_rgb(picture).getpixel((0, 0)) == (255, 255, 255)


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), color).convert("P") for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    first = images.to_rgb(images.decode(data))
    assert first.size == (8, 8) and first.getpixel((4, 4)) == (255, 0, 0)  # red, not the blue second frame


def test_crop_equals_numpy_slice_and_clips_to_edges():
    picture = make_image(40, 30)
    pixels = np.asarray(picture)
    assert np.array_equal(np.asarray(images.crop(picture, BBox(5, 7, 10, 6))), pixels[7:13, 5:15])
    assert np.array_equal(np.asarray(images.crop(picture, BBox(30.4, 20, 50, 50))), pixels[20:30, 30:40])


def test_box_without_overlap_is_an_error():
    with pytest.raises(ImageError, match="does not overlap the 40x30 image"):
        images.crop(make_image(40, 30), BBox(45, 0, 5, 5))


def test_exif_rotated_crop_is_cut_in_stored_pixels_then_turned_upright():
    picture = make_image(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be turned 90 degrees clockwise to display
    decoded = images.decode(encode(picture, "PNG", exif=exif.tobytes()))
    part = images.crop(decoded, BBox(0, 0, 20, 10))
    expected = np.rot90(np.asarray(picture)[0:10, 0:20], k=-1)
    assert np.array_equal(np.asarray(part), expected)
    assert images.whole(decoded).size == (30, 40)


def test_save_jpeg_is_atomic_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b.jpg"
    images.save_jpeg(make_image(), target)
    assert Image.open(target).size == (64, 48)
    assert [p.name for p in target.parent.iterdir()] == ["b.jpg"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width, height", [
    (40_000, 40_000),  # Pillow raises DecompressionBombError (over twice its limit)
    (10_000, 9_000),  # Pillow only warns (between its limit and twice it)
    (images.MAX_PIXELS + 1, 1),  # just over the policy
])
def test_decode_refuses_decompression_bombs_with_a_reason(width, height):
    with pytest.raises(ImageError, match=r"image too large: [0-9x =,]+ pixels, over the limit of 89,478,485"):
        images.decode(bomb_png(width, height))


def test_decode_refuses_bombs_when_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # `python -W error`: Pillow's warning becomes an exception
        with pytest.raises(ImageError, match="image too large"):
            images.decode(bomb_png(10_000, 9_000))


def test_load_names_the_file_of_a_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    with pytest.raises(ImageError, match=r"bomb\.png: image too large"):
        images.load(path)


def test_decode_turns_any_pillow_failure_into_an_image_error():
    png = bytearray(encode(make_image(), "PNG"))
    png[16:24] = b"\x00" * 8  # IHDR width and height zero: Pillow raises SyntaxError / ValueError
    with pytest.raises(ImageError):
        images.decode(bytes(png))


def test_is_complete_jpeg_spots_empty_and_cut_files(tmp_path):
    path = tmp_path / "a.jpg"
    images.save_jpeg(make_image(), path)
    assert images.is_complete_jpeg(path)
    whole = path.read_bytes()
    for broken in (b"", whole[:2], whole[: len(whole) // 2], whole[:-1]):
        path.write_bytes(broken)
        assert not images.is_complete_jpeg(path)
    assert not images.is_complete_jpeg(tmp_path / "missing.jpg")


def exif_with_a_tag_pillow_cannot_write_back() -> bytes:
    """EXIF saying "turn 90 degrees", whose Make tag (text) is relabelled Compression (a number): Pillow
    reads the orientation, but writing this EXIF back (as ``ImageOps.exif_transpose`` does) raises
    ``struct.error``."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "camera"
    raw = bytearray(exif.tobytes())
    raw[raw.index(b"\x01\x0f") + 1] = 0x03  # tag 0x010F becomes 0x0103
    return bytes(raw)


def test_exif_that_cannot_be_written_back_still_turns_the_photo_upright():
    picture = make_image(40, 30)
    decoded = images.decode(encode(picture, "PNG", exif=exif_with_a_tag_pillow_cannot_write_back()))
    upright = np.rot90(np.asarray(picture), k=-1)
    assert np.array_equal(np.asarray(images.whole(decoded)), upright)
    assert np.array_equal(np.asarray(images.crop(decoded, BBox(0, 0, 20, 10))), upright[0:20, 20:30])


def test_unreadable_exif_leaves_the_photo_as_stored():
    picture = make_image(40, 30)
    broken = b"ExiZ\x00\x00MM" + Image.Exif().tobytes()[8:]  # not a TIFF header: Pillow raises SyntaxError
    decoded = images.decode(encode(picture, "PNG", exif=broken))
    assert np.array_equal(np.asarray(images.whole(decoded)), np.asarray(picture))
    assert np.array_equal(np.asarray(images.crop(decoded, BBox(2, 3, 5, 4))), np.asarray(picture)[3:7, 2:7])


def test_16_bit_big_endian_tiff_gives_the_pixels_of_the_little_endian_one():
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    little = Image.frombytes("I;16", (4, 3), values.astype("<u2").tobytes())
    big = images.decode(encode(Image.frombytes("I;16B", (4, 3), values.astype(">u2").tobytes()), "TIFF"))
    assert big.mode == "I;16B"  # Pillow's point() refuses this mode
    expected = np.asarray(images.to_rgb(little))
    assert np.array_equal(np.asarray(images.to_rgb(big)), expected) and expected[2, 3, 0] == 55_000 // 256
