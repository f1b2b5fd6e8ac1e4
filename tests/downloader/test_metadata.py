import json
from pathlib import Path

import pytest

from downloader import BBox, MetadataError, read_metadata, read_photos

SHARED_META = Path(__file__).resolve().parents[3] / "shared" / "data" / "street2shop-meta"


def write(meta: Path, name: str, data) -> None:
    meta.mkdir(parents=True, exist_ok=True)
    (meta / name).write_text(data if isinstance(data, str) else json.dumps(data))


def test_photos_txt_zero_padded_ids(tmp_path):
    path = tmp_path / "photos.txt"
    path.write_text("000000001,http://a/1.jpg\n000000012,http://a/12.jpg\n\n")
    assert read_photos(path) == {1: "http://a/1.jpg", 12: "http://a/12.jpg"}


def test_photos_txt_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "photos.txt"
    path.write_text("000000001,http://a/1.jpg\nnot a line\n")
    with pytest.raises(MetadataError, match=r"photos.txt line 2"):
        read_photos(path)


def test_pairs_boxes_numbered_per_photo_and_product(tmp_path):
    meta = tmp_path / "meta" / "json"
    box = {"left": 1, "top": 2, "width": 3.5, "height": 4.0}
    write(meta, "train_pairs_bags.json", [
        {"photo": 5, "product": 9, "bbox": box},
        {"photo": 5, "product": 9, "bbox": box},
        {"photo": 5, "product": 8, "bbox": box},
    ])
    write(meta, "retrieval_bags.json", [{"photo": 100, "product": 9}, {"photo": 101, "product": 77}])
    result = read_metadata(tmp_path, categories=["bags"])
    assert [(p.photo, p.product, p.index) for p in result.pairs] == [(5, 9, 0), (5, 9, 1), (5, 8, 0)]
    assert result.pairs[0].bbox == BBox(1, 2, 3.5, 4)
    assert result.pairs[0].split == "train" and result.pairs[0].category == "bags"
    assert [(s.photo, s.product, s.split) for s in result.shop] == [(100, 9, "train"), (101, 77, None)]


@pytest.mark.parametrize("entry, message", [
    ({"product": 1, "bbox": {"left": 0, "top": 0, "width": 1, "height": 1}}, "missing field 'photo'"),
    ({"photo": 1, "product": 1}, "missing field 'bbox'"),
    ({"photo": 1, "product": 1, "bbox": {"left": 0, "top": 0, "width": 0, "height": 0}}, "zero-size"),
    ({"photo": 1, "product": 1, "bbox": {"left": 0, "top": 0, "width": -3, "height": 2}}, "negative"),
    ({"photo": 1, "product": 1, "bbox": {"left": 0, "top": 0, "width": "a", "height": 2}}, "numbers"),
    ({"photo": 1, "product": 1, "bbox": {"left": 0, "top": 0, "width": float("inf"), "height": 2}}, "finite"),
    ({"photo": 1, "product": 1, "bbox": {"left": float("nan"), "top": 0, "width": 1, "height": 2}}, "finite"),
    ({"photo": 2, "product": 1, "bbox": {"left": 0, "top": 0, "width": 1, "height": 1}}, "not in photos.txt"),
])
def test_bad_entries_skipped_and_reported_or_fatal_with_strict(tmp_path, entry, message):
    meta = tmp_path / "json"
    good = {"photo": 1, "product": 3, "bbox": {"left": 0, "top": 0, "width": 1, "height": 1}}
    write(meta, "test_pairs_hats.json", [good, entry])
    result = read_metadata(meta, categories=["hats"], photo_ids={1})
    assert len(result.pairs) == 1
    assert len(result.problems) == 1
    assert result.problems[0].entry == 1 and message in str(result.problems[0])
    assert "test_pairs_hats.json entry 1" in str(result.problems[0])
    with pytest.raises(MetadataError, match=r"test_pairs_hats.json: entry 1"):
        read_metadata(meta, categories=["hats"], photo_ids={1}, strict=True)


def test_box_numbers_do_not_depend_on_the_selected_categories(tmp_path):
    box = {"left": 0, "top": 0, "width": 1, "height": 1}
    write(tmp_path, "train_pairs_footwear.json", [{"photo": 1, "product": 2, "bbox": box}])
    write(tmp_path, "train_pairs_tops.json", [{"photo": 1, "product": 2, "bbox": box}])
    assert [p.index for p in read_metadata(tmp_path, categories=["tops"]).pairs] == [1]
    assert [p.index for p in read_metadata(tmp_path).pairs] == [0, 1]


def test_file_that_is_not_json_names_the_file(tmp_path):
    write(tmp_path, "train_pairs_tops.json", "{not json")
    with pytest.raises(MetadataError, match="train_pairs_tops.json: not JSON"):
        read_metadata(tmp_path, categories=["tops"])


def test_json_nested_too_deeply_names_the_file(tmp_path):
    write(tmp_path, "train_pairs_tops.json", "[" * 100_000 + "]" * 100_000)  # json raised RecursionError
    with pytest.raises(MetadataError, match=r"train_pairs_tops\.json: not JSON \(nested too deeply\)"):
        read_metadata(tmp_path, categories=["tops"])


def test_missing_meta_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_metadata(tmp_path / "nope")


@pytest.mark.skipif(not SHARED_META.exists(), reason="shared Street2Shop metadata not beside the checkout")
def test_reads_every_real_street2shop_entry():
    result = read_metadata(SHARED_META)
    # 39,266 entries: all parse but the one zero-size box (bags, photo 8288).
    assert len(result.pairs) == 39265
    assert [(p.file, p.photo) for p in result.problems] == [("train_pairs_bags.json", 8288)]
    assert max(p.index for p in result.pairs) == 12  # collages: up to 13 boxes of one (photo, product)
    paths = {(p.photo, p.product, p.index) for p in result.pairs}
    assert len(paths) == len(result.pairs)  # regression: product 25822 is in footwear and tops
    assert sum(1 for p in result.pairs if p.split == "test") == 8637


def test_files_that_are_not_utf8_text_name_the_file(tmp_path):
    photos = tmp_path / "photos.txt"
    photos.write_bytes(b"\xff\xd8\xff\xe0 a JPEG given as photos.txt")
    with pytest.raises(MetadataError, match=r"photos\.txt: not UTF-8 text"):
        read_photos(photos)
    write(tmp_path / "meta", "retrieval_bags.json", "[]")
    (tmp_path / "meta" / "retrieval_bags.json").write_bytes(b'[{"photo": 1, "product": "\xff"}]')
    with pytest.raises(MetadataError, match=r"retrieval_bags\.json: not UTF-8 text"):
        read_metadata(tmp_path / "meta", ["bags"])


def test_photos_txt_id_of_digits_that_int_refuses_names_the_line(tmp_path):
    path = tmp_path / "photos.txt"
    path.write_text("²,http://a/2.jpg\n", encoding="utf-8")  # str.isdigit() is true for "²"
    with pytest.raises(MetadataError, match=r"photos.txt line 1: expected '<id>,<url>'"):
        read_photos(path)
