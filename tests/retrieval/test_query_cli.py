import json

import pytest
from PIL import Image

from embeddings import BuildConfig, Extractor, build
from retrieval import build_index
from retrieval.query import main
from tests.conftest import encode, make_image


@pytest.fixture
def raw_index(dataset, tmp_path):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    return tmp_path / "index.h5"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_missing_image(raw_index, tmp_path, capsys):
    assert main([str(tmp_path / "nope.jpg"), "--index", str(raw_index)]) == 2
    assert one_error_line(capsys) == f"error: {tmp_path / 'nope.jpg'}: no such image file"


def test_corrupt_image(raw_index, tmp_path, capsys):
    path = tmp_path / "broken.jpg"
    path.write_bytes(encode(make_image(200, 200))[:300])
    assert main([str(path), "--index", str(raw_index)]) == 2
    assert one_error_line(capsys).startswith(f"error: {path}: truncated or corrupt image")


def test_box_outside_the_image(raw_index, tmp_path, capsys):
    path = tmp_path / "photo.jpg"
    make_image(60, 40).save(path)
    assert main([str(path), "--index", str(raw_index), "--bbox", "100,10,20,20"]) == 2
    assert "does not overlap the 60x40 image" in one_error_line(capsys)


def test_decompression_bomb_is_a_photo_error(raw_index, tmp_path, capsys):
    """A PNG whose header declares 40000 x 40000 pixels: exit 2 in one line, not a traceback (exit 1)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    assert main([str(path), "--index", str(raw_index)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {path}: ") and "pixels" in line


def test_missing_and_corrupt_index(tmp_path, capsys):
    path = tmp_path / "photo.jpg"
    make_image().save(path)
    assert main([str(path), "--index", str(tmp_path / "index.h5")]) == 3
    assert "index does not exist" in one_error_line(capsys)
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n broken")
    assert main([str(path), "--index", str(tmp_path / "bad.h5")]) == 3
    assert "corrupt or unreadable index" in one_error_line(capsys)


def test_category_not_in_index(raw_index, tmp_path, capsys):
    path = tmp_path / "photo.jpg"
    make_image().save(path)
    assert main([str(path), "--index", str(raw_index), "--category", "hats"]) == 3
    assert "no shop photo of category 'hats'" in one_error_line(capsys)


def test_raw_index_refuses_a_head(raw_index, tmp_path, capsys):
    """(An index built with a head refusing another: test_head_path.test_query_cli_refuses_another_head.)"""
    path = tmp_path / "photo.jpg"
    make_image().save(path)
    assert main([str(path), "--index", str(raw_index), "--head", str(tmp_path)]) == 3
    assert "built from raw vectors without a head" in one_error_line(capsys)


def test_json_and_contact_sheet_with_a_real_backbone(tmp_path, capsys):
    shop = tmp_path / "out" / "shop"
    shop.mkdir(parents=True)
    lines = []
    for number in range(4):
        make_image(120, 90, seed=number).save(shop / f"{number}.jpg")
        lines.append(json.dumps({"path": f"shop/{number}.jpg", "kind": "shop", "photo": number, "product": number,
                                 "category": "tops", "split": "test", "bbox": None}) + "\n")
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.write_text("".join(lines))
    build(BuildConfig(out=tmp_path / "v.h5", manifest=manifest),
          Extractor("mobilenet_v2", weights=None, batch_size=4))
    build_index(tmp_path / "v.h5", manifest, tmp_path / "index.h5")

    code = main([str(shop / "2.jpg"), "--index", str(tmp_path / "index.h5"), "-k", "3", "--json",
                 "--sheet", str(tmp_path / "sheet.png")])
    assert code == 0
    matches = json.loads(capsys.readouterr().out)
    assert [set(m) for m in matches] == [{"rank", "product", "photo", "path", "category", "distance", "score"}] * 3
    assert matches[0]["photo"] == 2 and matches[0]["distance"] == pytest.approx(0, abs=1e-5)
    assert [m["rank"] for m in matches] == [1, 2, 3]
    assert Image.open(tmp_path / "sheet.png").size[0] > 500
