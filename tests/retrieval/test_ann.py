"""Approximate indexes (FAISS): recall against brute force, removal, add, category filter, identity, old files."""

import json
import logging

import h5py
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from embeddings import Vectors, write_vectors
from retrieval import AnnConfig, SearchEngine, build_index, load_index, remove_products
from retrieval.index import main as index_main
from tests.retrieval.conftest import ATTRS

DIM = 16


def clustered(count: int, seed: int) -> np.ndarray:
    """Vectors near a few low-dimensional clusters, as real embeddings are (uniform noise has no neighbours)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM)) * 4
    basis = rng.normal(size=(4, DIM))
    return (centres[rng.integers(0, 20, count)] + rng.normal(size=(count, 4)) @ basis
            + 0.05 * rng.normal(size=(count, DIM))).astype(np.float32)


def write_catalogue(root, counts=(("bags", 1500), ("dresses", 700)), seed=0, photo_base=0):
    """A manifest of shop photos (two per product) and their vector cache; returns (cache, manifest, vectors)."""
    root.mkdir(parents=True, exist_ok=True)
    lines, ids = [], []
    for category, count in counts:
        for number in range(count):
            photo = photo_base + len(ids)
            path = f"shop/{photo}.jpg"
            lines.append(json.dumps({"path": path, "kind": "shop", "photo": photo, "product": photo // 2,
                                     "category": category, "split": "train", "bbox": None}) + "\n")
            ids.append(path)
    vectors = clustered(len(ids), seed)
    (root / "manifest.jsonl").write_text("".join(lines))
    write_vectors(root / "vectors.h5", Vectors(np.array(ids, dtype=object), vectors, dict(ATTRS, dim=DIM)))
    return root / "vectors.h5", root / "manifest.jsonl", vectors


def near(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Queries from the catalogue's distribution: its rows, moved a little."""
    rng = np.random.default_rng(seed)
    return (vectors[rng.choice(len(vectors), count)] + 0.3 * rng.normal(size=(count, DIM))).astype(np.float32)


@pytest.fixture
def catalogue(tmp_path):
    return write_catalogue(tmp_path / "data")


def config(method, **more):
    return AnnConfig(method, target_recall=0.95, exact_below=100, train_rows=1000, tune_queries=100, **more)


def brute_force(index, queries, k, start, stop):
    distances = cdist(queries, np.asarray(index.embeddings[start:stop], np.float64), index.attrs["metric"])
    return np.argsort(distances, axis=1, kind="stable")[:, :k] + start


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.mark.parametrize("method", ["HNSW16", "IVF32,Flat", "IVF32,PQ4", "IVF32_HNSW32,PQ4", "auto"])
def test_recall_against_brute_force_for_each_kind(catalogue, tmp_path, method):
    cache, manifest, vectors = catalogue
    index, _ = build_index(cache, manifest, tmp_path / "index.h5", ann=config(method))
    assert index.approximate and set(index.attrs["ann"]) == {"bags", "dresses"}
    info = index.attrs["ann"]["bags"]
    assert info["factory"] == (method if method != "auto" else "HNSW32") and info["recall"] >= 0.95
    assert info["query_ms"] > 0 and info["param"] in ("efSearch", "nprobe")
    engine = SearchEngine.load(tmp_path / "index.h5")
    queries = near(vectors, 60, seed=7)
    for category, (start, stop) in engine.slices.items():
        rows, distances = engine.ranker.search(queries, 10, start, stop)
        assert recall(rows, brute_force(engine.index, queries, 10, start, stop)) >= 0.9
        exact = cdist(queries, np.asarray(engine.index.embeddings, np.float64)[rows[0]], "cosine")[0]
        np.testing.assert_allclose(distances[0], exact, rtol=1e-9)  # distances are exact, as in cdist
        assert (np.diff(distances, axis=1) >= 0).all()


def test_category_filter_and_products_once(catalogue, tmp_path):
    cache, manifest, vectors = catalogue
    build_index(cache, manifest, tmp_path / "index.h5", ann=config("HNSW16"))
    engine = SearchEngine.load(tmp_path / "index.h5")
    query = vectors[1600] + 0.01  # a dress
    for category in ("bags", "dresses"):
        matches = engine.search_embeddings(query, k=10, category=category)[0]
        assert len(matches) == 10 and {m.category for m in matches} == {category}
        assert len({m.product for m in matches}) == 10
    assert engine.search_embeddings(query, k=1)[0][0].photo == 1600
    everywhere = engine.ranker.search(query[None], 10)[0][0]
    start, stop = 0, len(engine.index)
    assert recall([everywhere], brute_force(engine.index, query[None], 10, start, stop)) >= 0.9


@pytest.mark.parametrize("method", ["exact", "HNSW16", "IVF32,PQ4"])
def test_removal_in_place(catalogue, tmp_path, method, capsys):
    cache, manifest, vectors = catalogue
    build_index(cache, manifest, tmp_path / "index.h5", ann=config(method))
    before = load_index(tmp_path / "index.h5")
    gone = [0, 5, 400, 760, 1000]  # products: two photos each
    (tmp_path / "gone.txt").write_text("760\n1000\n")
    assert index_main(["--out", str(tmp_path / "index.h5"), "--remove-products", "0,5,400",
                       "--remove-products-file", str(tmp_path / "gone.txt")]) == 0
    assert "10 photos removed" in capsys.readouterr().out
    after = load_index(tmp_path / "index.h5")
    assert len(after) == len(before) - 10 and not np.isin(after.products, gone).any()
    kept = ~np.isin(before.products, gone)
    assert sorted(after.id_list()) == sorted(np.array(before.id_list())[kept].tolist())
    row = after.id_list().index("shop/3.jpg")
    np.testing.assert_array_equal(after.embeddings[row], before.embeddings[before.id_list().index("shop/3.jpg")])
    engine = SearchEngine.load(tmp_path / "index.h5")
    removed_vectors = vectors[[0, 1, 10, 11, 800, 801, 1520, 1521, 2000, 2001]]
    for matches in engine.search_embeddings(removed_vectors, k=20):
        assert not {m.product for m in matches} & set(gone)  # removed products never come back
    queries = near(vectors, 40, seed=3)
    start, stop = engine.slices["bags"]
    rows, _ = engine.ranker.search(queries, 10, start, stop)
    assert recall(rows, brute_force(engine.index, queries, 10, start, stop)) >= 0.9
    assert remove_products(tmp_path / "index.h5", [999999])[1] == 0


def test_add_to_an_approximate_index_without_retraining(tmp_path, caplog):
    cache, manifest, vectors = write_catalogue(tmp_path / "data")
    lines = manifest.read_text().splitlines(keepends=True)
    (tmp_path / "data" / "first.jsonl").write_text("".join(lines[:1000] + lines[1500:1900]))
    build_index(cache, tmp_path / "data" / "first.jsonl", tmp_path / "index.h5", ann=config("IVF16,Flat"))
    first = load_index(tmp_path / "index.h5")
    with caplog.at_level(logging.WARNING):
        index, added = build_index(cache, manifest, tmp_path / "index.h5", add=True)
    assert added == 800 and len(index) == 2200
    info = index.attrs["ann"]["bags"]
    assert info["trained_rows"] == 1000 and info["added_rows"] == 500 and info["rows"] == 1500
    assert "stale" in caplog.text and "rebuild" in caplog.text
    engine = SearchEngine.load(tmp_path / "index.h5")
    for photo in (1200, 1450, 2100):  # added rows are found
        assert engine.search_embeddings(vectors[photo], k=1)[0][0].photo == photo
    import faiss

    from retrieval.ann import open_part

    def centroids(index):
        whole = open_part(index.ann["bags"].blob)  # kept alive while its parts are read
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(whole).quantizer)
        return faiss.vector_to_array(quantizer.codes).copy()

    np.testing.assert_array_equal(centroids(load_index(tmp_path / "index.h5")), centroids(first))  # not retrained


def test_add_refuses_another_backbone(catalogue, tmp_path):
    cache, manifest, _ = catalogue
    build_index(cache, manifest, tmp_path / "index.h5", ann=config("HNSW16"))
    other = tmp_path / "other.h5"
    write_vectors(other, Vectors(np.array(["shop/x.jpg"], dtype=object), np.ones((1, DIM), np.float32),
                                 dict(ATTRS, dim=DIM, weights="imagenet")))
    with pytest.raises(ValueError, match="weights: expected 'imagenet', found 'random:0'"):
        build_index(other, manifest, tmp_path / "index.h5", add=True)


def test_float16_halves_the_embeddings_and_keeps_recall(catalogue, tmp_path):
    cache, manifest, _ = catalogue
    build_index(cache, manifest, tmp_path / "f32.h5")
    build_index(cache, manifest, tmp_path / "f16.h5", dtype="float16")
    full, half = load_index(tmp_path / "f32.h5"), load_index(tmp_path / "f16.h5")
    assert half.embeddings.dtype == np.float16 and half.embeddings.nbytes * 2 == full.embeddings.nbytes
    queries = near(catalogue[2], 50, seed=11)
    exact = SearchEngine(full).ranker.search(queries, 10)[0]
    rows = SearchEngine(half).ranker.search(queries, 10)[0]
    assert recall(rows, exact) >= 0.95


def test_an_index_written_before_approximate_search_still_loads(catalogue, tmp_path):
    """Format 1: chunked float32 embeddings, no FAISS datasets (as the previous code wrote it)."""
    vectors = np.eye(4, dtype=np.float32)
    with h5py.File(tmp_path / "old.h5", "w") as handle:
        handle.attrs["format"] = "street2shop-index/1"
        handle.attrs["meta"] = json.dumps({"backbone": dict(ATTRS), "head": None, "metric": "cosine",
                                           "roots": [str(tmp_path)], "versions": {}})
        handle.create_dataset("embeddings", data=vectors, chunks=(4, 4))
        handle["ids"] = np.array([b"shop/a.jpg", b"shop/b.jpg", b"shop/c.jpg", b"shop/d.jpg"])
        handle["photos"] = np.arange(4, dtype=np.int64)
        handle["products"] = np.array([7, 7, 8, 9], dtype=np.int64)
        handle["categories"] = np.array([b"bags", b"bags", b"bags", b"hats"])
        handle["roots"] = np.zeros(4, dtype=np.int16)
    engine = SearchEngine.load(tmp_path / "old.h5")
    assert not engine.index.approximate
    assert [m.photo for m in engine.search_embeddings(np.array([0, 0, 1, 0.1], np.float32), k=2)[0]] == [2, 3]
    remove_products(tmp_path / "old.h5", [7])
    assert load_index(tmp_path / "old.h5").id_list() == ["shop/c.jpg", "shop/d.jpg"]


def test_auto_chooses_by_size_and_memory(catalogue, tmp_path):
    from retrieval.tuning import choose

    auto = AnnConfig("auto", exact_below=20_000)
    assert choose(5_000, 128, 4 << 30, auto) is None
    assert choose(1_000_000, 128, 4 << 30, auto) == "HNSW32"
    assert choose(1_000_000, 128, 600 << 20, auto) == "IVF4096,Flat"  # 629 bytes a row: vectors fit, graph not
    assert choose(1_000_000, 128, 200 << 20, auto) == "IVF4096,PQ64"
    assert choose(10_000_000, 128, 1 << 30, auto) == "IVF16384_HNSW32,PQ64"  # a graph finds a row's list
    assert choose(10_000_000, 128, 300 << 20, auto) == "IVF16384_HNSW32,PQ16"
    with pytest.raises(ValueError, match="cannot hold"):
        choose(10_000_000, 128, 50 << 20, auto)
    cache, manifest, _ = catalogue
    index, _ = build_index(cache, manifest, tmp_path / "small.h5", ann=AnnConfig("auto"))
    assert not index.approximate  # 2,200 rows: exact


def test_bad_ann_arguments_exit_2_in_one_line(catalogue, tmp_path, capsys):
    cache, manifest, _ = catalogue
    common = ["--vectors", str(cache), "--manifest", str(manifest), "--out", str(tmp_path / "i.h5")]
    for extra, message in ((["--ann", "HNSW-nonsense"], "not a FAISS factory string"),
                           (["--max-memory", "lots"], "expected a size such as 4G"),
                           (["--target-recall", "1.5"], "--target-recall must be in (0, 1]")):
        assert index_main(common + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert index_main(["--out", str(tmp_path / "i.h5"), "--remove-products", "12,x"]) == 2
    assert "product id 'x' is not an integer" in capsys.readouterr().err
    assert not (tmp_path / "i.h5").exists()
    assert index_main(["--out", str(tmp_path / "i.h5"), "--remove-products", "12"]) == 2
    assert "index does not exist" in capsys.readouterr().err


def test_factory_checked_against_the_real_dimension_and_small_categories(tmp_path, capsys):
    """PQ5 does not suit 16-d vectors (said in words, not a cut FAISS message), and IVF over a category
    smaller than its held-out tuning rows, or with more lists than rows, is one line, exit 2, no traceback."""
    cache, manifest, vectors = write_catalogue(tmp_path / "data", counts=(("bags", 200), ("dresses", 120)))
    common = ["--vectors", str(cache), "--manifest", str(manifest), "--out", str(tmp_path / "i.h5")]
    assert index_main(common + ["--ann", "IVF4,PQ4x4"]) == 0
    index = load_index(tmp_path / "i.h5")
    assert {info["factory"] for info in index.attrs["ann"].values()} == {"IVF4,PQ4x4"}
    engine = SearchEngine.load(tmp_path / "i.h5")
    assert [m.photo for m in engine.search_vectors(vectors[:1], k=1)[0]] == [0]
    capsys.readouterr()
    for factory, message in (("IVF4,PQ5", "a multiple of 5"), ("IVF512,Flat", "bags (200 rows)"),
                             ("garbage", "not a FAISS factory string")):
        assert index_main(common + ["--ann", factory, "--out", str(tmp_path / "j.h5")]) == 2, factory
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "j.h5").exists()


def test_heavy_removal_advises_a_rebuild(catalogue, tmp_path, caplog):
    """Removed rows stay in the FAISS graph or lists (skipped): past a share, the recall measured at build
    time no longer holds, so the removal says so for that category only."""
    cache, manifest, _ = catalogue
    index, _ = build_index(cache, manifest, tmp_path / "index.h5", ann=config("HNSW16"))
    bags = np.unique(index.products[index.categories == b"bags"])
    with caplog.at_level(logging.WARNING, logger="retrieval"):
        remove_products(tmp_path / "index.h5", bags[:5])
        assert "rebuild" not in caplog.text
        remove_products(tmp_path / "index.h5", bags[: len(bags) // 2])
    warned = [r.getMessage() for r in caplog.records if "rebuild" in r.getMessage()]
    assert len(warned) == 1 and "category bags" in warned[0], warned


def test_faiss_parts_are_built_from_the_mapped_embeddings_a_block_at_a_time(tmp_path, monkeypatch):
    """Training, filling and tuning read the embeddings just written a block at a time: a category is never
    held in memory whole (10M rows of 128 floats are 4.8 GiB), nor twice as its unit-length copy."""
    import tracemalloc

    from retrieval import ann, ranking, tuning, writer

    rng = np.random.default_rng(0)  # 128-d rows, as after a head: a row's bookkeeping is small beside it
    vectors = (rng.normal(size=(40, 128)) * 3)[rng.integers(0, 40, 40_000)] + rng.normal(size=(40_000, 128))
    vectors = vectors.astype(np.float32)
    ids = [f"shop/{row}.jpg" for row in range(len(vectors))]
    manifest, cache = tmp_path / "manifest.jsonl", tmp_path / "vectors.h5"
    manifest.write_text("".join(json.dumps({"path": key, "kind": "shop", "photo": row, "product": row,
                                            "category": "bags"}) + "\n" for row, key in enumerate(ids)))
    write_vectors(cache, Vectors(np.array(ids, dtype=object), vectors, dict(ATTRS, dim=128)))
    monkeypatch.setattr(tuning, "ADD_BLOCK", 4096)  # blocks and scratch far smaller than the rows
    monkeypatch.setattr(writer, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(ranking, "SCRATCH_BYTES", 1 << 20)
    monkeypatch.setattr(ann, "IO_BLOCK", 1 << 20)
    peaks = []
    build_ann = writer.build_ann

    def measured(*args, **kwargs):
        tracemalloc.reset_peak()
        build_ann(*args, **kwargs)
        peaks.append(tracemalloc.get_traced_memory()[1])

    monkeypatch.setattr(writer, "build_ann", measured)
    tracemalloc.start()
    try:
        index, _ = build_index(cache, manifest, tmp_path / "index.h5",
                               ann=AnnConfig("IVF64,Flat", exact_below=100, train_rows=4000, tune_queries=50))
    finally:
        tracemalloc.stop()
    assert peaks and peaks[0] < 0.75 * vectors.nbytes, (peaks, vectors.nbytes)
    assert index.attrs["ann"]["bags"]["recall"] >= 0.95
    queries = vectors[:30] + rng.normal(size=(30, 128)).astype(np.float32)
    rows, _ = SearchEngine.load(tmp_path / "index.h5").ranker.search(queries, 10)
    assert recall(rows, brute_force(index, queries, 10, 0, len(index))) >= 0.9


def test_a_loaded_index_keeps_its_parts_when_its_file_is_rebuilt(catalogue, tmp_path):
    """A part's bytes are read when a ranker opens it: from the file that was loaded, not from whatever file
    has the same name by then (indexes are replaced by renaming a new file over them)."""
    from retrieval.ann import AnnRanker

    cache, manifest, vectors = catalogue
    build_index(cache, manifest, tmp_path / "index.h5", ann=config("HNSW16"))
    loaded = load_index(tmp_path / "index.h5")
    other = write_catalogue(tmp_path / "other", counts=(("bags", 300), ("dresses", 200)), seed=5)
    build_index(other[0], other[1], tmp_path / "index.h5", ann=config("IVF16,Flat"))
    assert len(load_index(tmp_path / "index.h5")) == 500
    ranker = AnnRanker(loaded, loaded.attrs["metric"])
    queries = near(vectors, 40, seed=6)
    start, stop = loaded.category_slices()["bags"]
    rows, _ = ranker.search(queries, 10, start, stop)
    assert recall(rows, brute_force(loaded, queries, 10, start, stop)) >= 0.9


@pytest.mark.parametrize("block", [64, 1000, 1 << 24])
def test_a_part_written_and_read_in_blocks_is_the_index_byte_for_byte(tmp_path, monkeypatch, block):
    """FAISS writes and reads in many small pieces; they are gathered into blocks of any size, and a piece
    longer than a block still comes whole."""
    import faiss

    from retrieval import ann

    monkeypatch.setattr(ann, "IO_BLOCK", block)
    vectors = clustered(3000, seed=2)
    index = faiss.index_factory(DIM, "IVF16,Flat")
    index.train(vectors)
    index.add(vectors)
    expected = faiss.serialize_index(index)
    with h5py.File(tmp_path / "part.h5", "w") as handle:
        blob = ann.store_part(handle, index)
        np.testing.assert_array_equal(handle[blob.name][:], expected)
        np.testing.assert_array_equal(faiss.serialize_index(ann.open_part(blob)), expected)
