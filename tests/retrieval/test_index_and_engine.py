import threading

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from downloader import BBox, ImageError
from embeddings import Vectors, write_vectors
from retrieval import IndexFileError, SearchEngine, build_index, load_index
from retrieval.topk import evaluate
from tests.conftest import make_image
from tests.retrieval.conftest import ATTRS, SHOP, write_dataset


def test_raw_index_sorted_by_category_and_round_trips(dataset, tmp_path):
    cache, manifest = dataset
    index, added = build_index(cache, manifest, tmp_path / "index.h5")
    assert added == 6 and index.attrs["head"] is None and index.attrs["metric"] == "cosine"
    loaded = load_index(tmp_path / "index.h5")
    assert [loaded.category(row) for row in range(6)] == ["bags"] * 3 + ["dresses"] * 3
    assert loaded.category_slices() == {"bags": (0, 3), "dresses": (3, 6)}
    row = loaded.id_list().index("shop/c1.jpg")
    np.testing.assert_array_equal(loaded.embeddings[row], SHOP["shop/c1.jpg"][2])
    assert loaded.path(row) == str(tmp_path / "data" / "shop" / "c1.jpg") and loaded.products[row] == 3
    assert loaded.attrs["backbone"]["backbone"] == "vgg19"


def test_add_appends_without_rebuilding(dataset, tmp_path):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5", categories=["bags"])
    first = load_index(tmp_path / "index.h5")
    _, added = build_index(cache, manifest, tmp_path / "index.h5", add=True)
    assert added == 3
    merged = load_index(tmp_path / "index.h5")
    assert sorted(merged.id_list()) == sorted(SHOP)
    _, again = build_index(cache, manifest, tmp_path / "index.h5", add=True)
    assert again == 0 and len(load_index(tmp_path / "index.h5")) == 6
    np.testing.assert_array_equal(merged.embeddings[:3], first.embeddings)


def test_add_keeps_longer_ids_and_categories_whole(dataset, tmp_path):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    category, path = "x" * 80, "shop/" + "long" * 30 + ".jpg"
    other = write_dataset(tmp_path / "other", {path: (9, category, [1, 1, 1, 1])}, {})
    build_index(other[0], other[1], tmp_path / "index.h5", add=True)
    index = load_index(tmp_path / "index.h5")
    row = index.id_list().index(path)
    assert index.category(row) == category and index.path(row) == str(tmp_path / "other" / path)


def test_add_with_other_weights_is_refused(dataset, tmp_path):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    other = write_dataset(tmp_path / "other", {"shop/z.jpg": (9, "bags", [1, 1, 1, 1])}, {})
    write_vectors(other[0], Vectors(np.array(["shop/z.jpg"], dtype=object), np.ones((1, 4), np.float32),
                                    dict(ATTRS, weights="imagenet")))
    with pytest.raises(ValueError, match=r"weights: expected 'imagenet', found 'random:0'"):
        build_index(other[0], other[1], tmp_path / "index.h5", add=True)


def test_index_errors(dataset, tmp_path):
    cache, manifest = dataset
    with pytest.raises(IndexFileError, match="the index would be empty"):
        build_index(cache, manifest, tmp_path / "index.h5", categories=["hats"])
    assert not (tmp_path / "index.h5").exists()
    with pytest.raises(FileNotFoundError, match="index does not exist"):
        load_index(tmp_path / "index.h5")
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(IndexFileError, match="corrupt or unreadable index"):
        load_index(tmp_path / "bad.h5")


def test_products_once_at_their_best_photo_and_category_filter(dataset, tmp_path):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    engine = SearchEngine.load(tmp_path / "index.h5")
    matches = engine.search_embeddings(np.array([1, 0.05, 0, 0], np.float32), k=3)[0]
    assert [m.product for m in matches] == [1, 2, 3]  # a1 and a2 are both product 1: once
    assert matches[0].path.endswith("shop/a1.jpg") and matches[0].rank == 1
    expected = cdist([[1, 0.05, 0, 0]], [SHOP["shop/a1.jpg"][2]], "cosine")[0, 0]
    assert matches[0].distance == pytest.approx(expected)
    assert 0 <= matches[0].score <= 1 and matches[0].score > matches[1].score
    dresses = engine.search_embeddings(np.array([1, 0.05, 0, 0], np.float32), k=10, category="dresses")[0]
    assert {m.category for m in dresses} == {"dresses"} and len(dresses) == 3
    with pytest.raises(IndexFileError, match=r"no shop photo of category 'hats' in the index \(it has: bags, dresses\)"):
        engine.search_embeddings(np.ones(4, np.float32), category="hats")


def test_image_search_uses_the_same_backbone(tiny_extractor, tmp_path):
    from embeddings import BuildConfig, build

    shop = tmp_path / "shop"
    shop.mkdir()
    manifest_lines = []
    for number in range(6):
        make_image(40, 40, seed=number).save(shop / f"{number}.png")
        manifest_lines.append(f'{{"path": "shop/{number}.png", "kind": "shop", "photo": {number}, '
                              f'"product": {number // 2}, "category": "tops", "split": "test", "bbox": null}}\n')
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(manifest_lines))
    build(BuildConfig(out=tmp_path / "v.h5", manifest=manifest), tiny_extractor)
    build_index(tmp_path / "v.h5", manifest, tmp_path / "index.h5")
    engine = SearchEngine.load(tmp_path / "index.h5", extractor=tiny_extractor)

    match = engine.search(shop / "4.png", k=1)[0]
    assert (match.photo, match.product) == (4, 2) and match.distance == pytest.approx(0, abs=1e-6)
    picture = make_image(80, 80, seed=9)
    box = BBox(10, 10, 40, 40)
    via_box = engine.search(picture, k=3, bbox=box)
    via_crop = engine.search(np.asarray(picture)[10:50, 10:50], k=3)
    assert [m.photo for m in via_box] == [m.photo for m in via_crop]
    assert [m.photo for m in engine.search_batch([shop / "0.png", shop / "5.png"], k=1)[1]] == [5]
    with pytest.raises(ImageError, match="does not overlap"):
        engine.search(picture, bbox=BBox(500, 500, 5, 5))
    with pytest.raises(FileNotFoundError, match="no such image file"):
        engine.search(tmp_path / "missing.jpg")

    results, errors = {}, []

    def worker(number: int) -> None:
        try:
            results[number] = [m.photo for m in engine.search(shop / f"{number % 6}.png", k=2)]
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(results[n][0] == n % 6 for n in range(12))


def test_evaluation_ranks_by_hand(dataset, tmp_path):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    report = evaluate(tmp_path / "index.h5", cache, manifest, ks=(1, 2, 3))
    # s1 -> product 1 first (rank 1); s2 -> a1, a2 (product 1) then b1: rank 3; s3 -> d1 then e1: rank 2
    assert report.queries == {"bags": 2, "dresses": 1, "all": 3}
    assert report.accuracy["raw"]["bags"] == {1: 0.5, 2: 0.5, 3: 1.0}
    assert report.accuracy["raw"]["dresses"] == {1: 0.0, 2: 1.0, 3: 1.0}
    assert report.accuracy["raw"]["all"] == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    assert "head" not in report.accuracy
    assert "bags (2)" in report.table()
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no test street crop with a cached vector"):
        evaluate(tmp_path / "index.h5", cache, tmp_path / "empty.jsonl", ks=(1,))
