"""Issue 8 for retrieval: checked manifests, one writer per index, the extractor checked before use, evaluate's
missing inputs named, bounded memory, and the ``main()`` of index and evaluate."""

import json
import threading
import time
import tracemalloc

import h5py
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from common import WriterLock
from embeddings import CacheError, Vectors, write_vectors
from retrieval import IndexFileError, SearchEngine, build_index, load_index
from retrieval.evaluate import main as evaluate_main
from retrieval.index import main as index_main
from retrieval.ranking import Ranker
from tests.retrieval.conftest import ATTRS, SHOP, STREET, write_dataset


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def hostile_manifest(root):
    """The dataset's manifest with bad lines: not JSON, no kind, a list, a path out of the folder, an absolute one."""
    cache, manifest = write_dataset(root, SHOP, STREET)
    outside = root.parent / "x.jpg"
    outside.write_bytes(b"not shown")
    bad = ["this is not json", json.dumps({"path": "shop/z.jpg", "photo": 1, "product": 1, "category": "bags"}),
           json.dumps([1, 2]),
           json.dumps({"path": "../x.jpg", "kind": "shop", "photo": 7, "product": 70, "category": "bags"}),
           json.dumps({"path": str(outside), "kind": "shop", "photo": 8, "product": 80, "category": "bags"})]
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(bad[:3] + lines + bad[3:]) + "\n")
    ids = [*SHOP, *STREET, "../x.jpg", str(outside)]
    vectors = [v[-1] for v in SHOP.values()] + [v[-1] for v in STREET.values()] + [[1, 0, 0, 0], [1, 0, 0, 0]]
    write_vectors(cache, Vectors(np.array(ids, dtype=object), np.array(vectors, np.float32), ATTRS))
    return cache, manifest


def test_index_skips_bad_manifest_lines_and_never_indexes_outside_paths(tmp_path, capsys, caplog):
    cache, manifest = hostile_manifest(tmp_path / "data")
    out = ["--vectors", str(cache), "--manifest", str(manifest), "--out", str(tmp_path / "index.h5")]
    assert index_main(out) == 0
    assert f"{manifest}:1: not JSON" in caplog.text and f"{manifest}:2: 'kind'" in caplog.text
    assert f"{manifest}:14: 'path' '../x.jpg' leaves the manifest's folder" in caplog.text
    assert f"{manifest}:15: 'path' '{tmp_path / 'x.jpg'}' is absolute" in caplog.text
    capsys.readouterr()
    index = load_index(tmp_path / "index.h5")
    assert sorted(index.id_list()) == sorted(SHOP)
    assert index_main(out + ["--strict"]) == 2
    assert one_line(capsys) == f"error: {manifest}:1: not JSON"


def test_an_index_holding_an_outside_path_is_refused(dataset, tmp_path):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    with h5py.File(tmp_path / "index.h5", "r+") as handle:  # as an index built before manifests were checked
        ids = handle["ids"][:].astype("S64")
        ids[2] = b"../../etc/x.jpg"
        del handle["ids"]
        handle["ids"] = ids
    with pytest.raises(IndexFileError, match=r"row 2 has the image path '../../etc/x.jpg', outside its image folder"):
        SearchEngine.load(tmp_path / "index.h5")


def test_second_writer_exits_2_or_waits(dataset, tmp_path, capsys):
    cache, manifest = dataset
    args = ["--vectors", str(cache), "--manifest", str(manifest), "--out", str(tmp_path / "index.h5")]
    with WriterLock(tmp_path / "index.h5"):
        assert index_main(args) == 2
        line = one_line(capsys)
        assert line.startswith(f"error: {tmp_path / 'index.h5'}: another run is writing it: pid ")
        assert index_main(["--out", str(tmp_path / "index.h5"), "--remove-products", "1"]) == 2
        capsys.readouterr()
    assert not (tmp_path / "index.h5").exists()
    lock = WriterLock(tmp_path / "index.h5").__enter__()
    threading.Timer(0.5, lock.__exit__, args=(None, None, None)).start()
    began = time.monotonic()
    assert index_main(args + ["--wait"]) == 0
    assert time.monotonic() - began >= 0.4 and len(load_index(tmp_path / "index.h5")) == 6
    assert not list(tmp_path.glob(".index.h5*"))  # no temporary file left


def test_save_index_is_one_writer_too(dataset, tmp_path):
    """An index saved from memory takes the output's lock like a build: the two never write one file at once."""
    from common import LockHeld
    from retrieval import save_index

    cache, manifest = dataset
    index, _ = build_index(cache, manifest, tmp_path / "index.h5")
    with WriterLock(tmp_path / "copy.h5"), pytest.raises(LockHeld, match="another run is writing it"):
        save_index(tmp_path / "copy.h5", index)
    assert not (tmp_path / "copy.h5").exists()
    save_index(tmp_path / "copy.h5", index)
    assert load_index(tmp_path / "copy.h5").id_list() == index.id_list()


def test_a_failed_write_leaves_the_old_index(dataset, tmp_path, monkeypatch):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5", categories=["bags"])
    import retrieval.writer as writer

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "write_metadata", broken)
    with pytest.raises(OSError, match="disk full"):
        build_index(cache, manifest, tmp_path / "index.h5", add=True)
    assert len(load_index(tmp_path / "index.h5")) == 3 and not list(tmp_path.glob(".index.h5*"))


def test_extractor_is_checked_before_it_is_kept(dataset, tmp_path, tiny_extractor, monkeypatch):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")  # vgg19 fc2, 4-d
    with pytest.raises(CacheError, match="backbone: expected 'vgg19', found 'tiny'"):
        SearchEngine.load(tmp_path / "index.h5", extractor=tiny_extractor)  # one passed in is checked
    import embeddings.extraction.extractor as extractor_module

    monkeypatch.setattr(extractor_module, "Extractor", lambda *args, **kwargs: tiny_extractor)
    engine = SearchEngine.load(tmp_path / "index.h5")
    for _ in range(2):  # the second search must not run on the mismatched backbone
        with pytest.raises(CacheError, match="backbone: expected 'vgg19', found 'tiny'"):
            engine.search(np.zeros((8, 8, 3), np.uint8))


def test_evaluate_names_missing_inputs(dataset, tmp_path, capsys):
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    base = ["--index", str(tmp_path / "index.h5"), "--vectors", str(cache), "--manifest", str(manifest)]
    assert evaluate_main(base + ["--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "raw backbone vectors (cosine)" in out and "bags (2)" in out
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["queries"]["all"] == 3
    for position, missing, what in ((3, tmp_path / "none.h5", "vector cache"),
                                    (5, tmp_path / "none.jsonl", "manifest"),
                                    (1, tmp_path / "none_index.h5", "index")):
        args = list(base)
        args[position] = str(missing)
        assert evaluate_main(args) == 2
        assert one_line(capsys) == f"error: {missing}: {what} does not exist" + (
            " (build one with python -m retrieval.index)" if what == "index" else "")
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(base + ["--ks", "1,x"])
    assert exit_info.value.code == 2 and "expected comma-separated integers" in capsys.readouterr().err


def test_evaluate_of_a_raw_index_whose_shop_vectors_are_elsewhere(dataset, tmp_path, capsys):
    """The index holds the raw vectors: the baseline comes from it, not from --vectors (which has street only)."""
    cache, manifest = dataset
    build_index(cache, manifest, tmp_path / "index.h5")
    street = write_dataset(tmp_path / "street", {"shop/unused.jpg": (99, "hats", [1, 1, 1, 1])}, STREET)[0]
    assert evaluate_main(["--index", str(tmp_path / "index.h5"), "--vectors", str(street), "--manifest", str(manifest),
                          "--out", str(tmp_path / "report"), "--ks", "1,2,3"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["accuracy"]["raw"]["all"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(2 / 3), "3": 1.0}


def test_exact_distances_stay_within_the_scratch_budget():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 256)).astype(np.float32)
    queries = rng.normal(size=(200, 256)).astype(np.float32)
    ranker = Ranker(vectors, scratch_bytes=1 << 20)
    tracemalloc.start()
    try:
        rows, distances = ranker.search(queries, k=50)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = cdist(queries, vectors)
    order = np.argsort(expected, axis=1, kind="stable")[:, :50]
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_allclose(distances, np.take_along_axis(expected, order, axis=1), rtol=1e-9)
    assert peak < 6 << 20, f"{peak / 2**20:.1f} MiB"  # was 2 x 200 x 82 x 256 float64 = 64 MiB


def test_index_build_streams_the_cache(tmp_path, monkeypatch):
    """20,000 x 256 raw vectors (20 MiB) in 1 MiB chunks: the build never holds them all."""
    import retrieval.writer as writer

    rng = np.random.default_rng(0)
    count = 20_000
    ids = [f"shop/{i}.jpg" for i in range(count)]
    write_vectors(tmp_path / "v.h5", Vectors(np.array(ids, dtype=object),
                                             rng.normal(size=(count, 256)).astype(np.float32), dict(ATTRS, dim=256)))
    (tmp_path / "manifest.jsonl").write_text("".join(
        json.dumps({"path": path, "kind": "shop", "photo": i, "product": i, "category": ["a", "b"][i % 2]}) + "\n"
        for i, path in enumerate(ids)))
    monkeypatch.setattr(writer, "CHUNK_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        writer.build_index(tmp_path / "v.h5", tmp_path / "manifest.jsonl", tmp_path / "index.h5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, f"{peak / 2**20:.1f} MiB"
    index = load_index(tmp_path / "index.h5")
    assert len(index) == count and index.category_slices() == {"a": (0, 10_000), "b": (10_000, 20_000)}


def test_index_main_good_and_bad(dataset, tmp_path, capsys):
    cache, manifest = dataset
    assert index_main(["--vectors", str(cache), "--manifest", str(manifest), "--out", str(tmp_path / "i.h5")]) == 0
    assert "6 shop photos (bags 3, dresses 3); raw vectors (no head); metric cosine" in capsys.readouterr().out
    assert index_main(["--vectors", str(tmp_path / "none.h5"), "--manifest", str(manifest),
                       "--out", str(tmp_path / "i.h5")]) == 2
    assert one_line(capsys) == f"error: {tmp_path / 'none.h5'}: vector cache does not exist"
    assert index_main(["--vectors", str(cache), "--manifest", str(manifest), "--out", str(tmp_path / "i.h5"),
                       "--head", str(tmp_path / "nohead")]) == 2
    assert "head file does not exist" in one_line(capsys)


def write_plan_inputs(root, lines, cached):
    root.mkdir(parents=True, exist_ok=True)
    (root / "m.jsonl").write_text("".join((json.dumps(line) if isinstance(line, dict) else line) + "\n"
                                          for line in lines))
    write_vectors(root / "v.h5", Vectors(np.array(cached, dtype=object), np.zeros((len(cached), 4), np.float32),
                                         dict(ATTRS, dim=4)))
    return root / "v.h5", root / "m.jsonl"


def test_the_shop_plan_keeps_each_paths_first_shop_line_with_a_cached_vector(tmp_path, caplog):
    from retrieval.writer import shop_plan

    def shop(path, photo, category="bags", kind="shop"):
        return {"path": path, "kind": kind, "photo": photo, "product": photo * 10, "category": category}

    lines = [shop("b.jpg", 2), shop("a.jpg", 1), "not json", shop("b.jpg", 3), shop("s.jpg", 4, kind="street"),
             shop("gone.jpg", 5), shop("d.jpg", 6, "dresses"), shop("old.jpg", 7), shop("é/ü.jpg", 8)]
    cache, manifest = write_plan_inputs(tmp_path, lines, ["old.jpg", "d.jpg", "s.jpg", "a.jpg", "é/ü.jpg", "b.jpg"])
    with caplog.at_level("WARNING"):
        plan = shop_plan(cache, manifest, None, np.array([b"old.jpg"]), False, 4)
    assert "1 shop photos of the manifest have no cached vector" in caplog.text and "m.jsonl:3: not JSON" in caplog.text
    m = plan.meta
    assert [i.decode() for i in m.ids] == ["b.jpg", "a.jpg", "d.jpg", "é/ü.jpg"]  # file order, first line wins
    assert m.photos.tolist() == [2, 1, 6, 8] and m.products.tolist() == [20, 10, 60, 80]
    assert m.categories.tolist() == [b"bags", b"bags", b"dresses", b"bags"]
    assert plan.cache_rows.tolist() == [5, 3, 1, 4]  # each path's row in the cache
    only = shop_plan(cache, manifest, ["dresses"], np.zeros(0, "S1"), False, 4)
    assert only.meta.ids.tolist() == [b"d.jpg"] and only.cache_rows.tolist() == [1]


def test_the_shop_plan_of_a_large_manifest_holds_arrays_not_objects(tmp_path):
    """At 10M photos a plan of Python objects and dicts took about 6 GiB (590 bytes a row measured at 200k)."""
    from retrieval.writer import shop_plan

    rows = 100_000
    paths = [f"shop/{i:07d}.jpg" for i in range(rows)]
    lines = [{"path": p, "kind": "shop", "photo": i, "product": i // 2, "category": "bags"} for i, p in enumerate(paths)]
    cache, manifest = write_plan_inputs(tmp_path, lines, paths[::-1])
    tracemalloc.start()
    try:
        plan = shop_plan(cache, manifest, None, np.zeros(0, "S1"), False, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(plan.meta) == rows and plan.cache_rows[:3].tolist() == [rows - 1, rows - 2, rows - 3]
    assert peak / rows < 300, peak / rows
