"""The head path: an index built with a trained head (engine search, calibrated score, another head refused,
``--add`` with another head refused, evaluate's head column), exact and approximate."""

import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from embeddings import HeadConfig, TrainConfig, Vectors, load_head, train, write_vectors
from retrieval import AnnConfig, IndexFileError, SearchEngine, build_index, load_index
from retrieval.evaluate import main as evaluate_main
from retrieval.query import main as query_main
from retrieval.topk import evaluate
from tests.conftest import make_image
from tests.retrieval.conftest import ATTRS

DIM = 12


def product_vectors(products: int, per_side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Street crops and shop photos of a product share a direction in a few dimensions, under noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(products, DIM)).astype(np.float32)
    labels = np.repeat(np.arange(products), 2 * per_side)
    return (centres[labels] + 0.6 * rng.normal(size=(len(labels), DIM))).astype(np.float32), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cache, a manifest (street crops split train/test by product) and two heads trained on it."""
    root = tmp_path_factory.mktemp("head_path")
    vectors, labels = product_vectors(products=40, per_side=3)
    ids, lines = [], []
    for row, product in enumerate(labels):
        kind = "street" if row % 6 < 3 else "shop"
        path = f"{kind}/{row}.jpg"
        ids.append(path)
        lines.append(json.dumps({"path": path, "kind": kind, "photo": row, "product": int(product),
                                 "category": ["tops", "shoes"][product % 2],
                                 "split": "train" if product < 30 else "test", "bbox": None}) + "\n")
    write_vectors(root / "v.h5", Vectors(np.array(ids, dtype=object), vectors, dict(ATTRS, dim=DIM)))
    (root / "manifest.jsonl").write_text("".join(lines))
    for name, seed in (("head", 0), ("other", 1)):
        train(TrainConfig(vectors=root / "v.h5", out=root / name, manifest=root / "manifest.jsonl", epochs=2,
                          batch_size=32, steps_per_epoch=3, val_fraction=0.25, patience=5,
                          head=HeadConfig(hidden=(16,), dim=4, dropout=0.0, seed=seed), seed=seed))
    return root, vectors, labels


def test_engine_searches_through_the_head_with_the_calibrated_score(trained, tmp_path):
    root, vectors, labels = trained
    index, _ = build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "index.h5", head=root / "head")
    head = load_head(root / "head")
    assert index.attrs["metric"] == "euclidean" and index.attrs["head"]["identity"] == head.identity
    engine = SearchEngine.load(tmp_path / "index.h5")
    assert engine.head.identity == head.identity
    query = vectors[0]  # a street crop of product 0 (tops)
    matches = engine.search_vectors(query, k=5, category="tops")[0]
    shop_rows = [r for r in range(len(labels)) if r % 6 >= 3 and labels[r] % 2 == 0]
    distances = cdist(head.embed(query[None]), head.embed(vectors[shop_rows]))[0]
    best = {}
    for row, distance in sorted(zip(shop_rows, distances), key=lambda pair: pair[1]):
        best.setdefault(int(labels[row]), (row, distance))
    expected = list(best.items())[:5]
    assert [m.product for m in matches] == [product for product, _ in expected]
    assert [m.photo for m in matches] == [row for _, (row, _) in expected]
    np.testing.assert_allclose([m.distance for m in matches], [d for _, (_, d) in expected], rtol=1e-5)
    np.testing.assert_allclose([m.score for m in matches],
                               head.calibration.score(np.array([m.distance for m in matches])), rtol=1e-9)
    assert engine.score(np.array([0.0]))[0] == pytest.approx(head.calibration.score(np.array([0.0]))[0])


@pytest.mark.parametrize("ann", ["exact", "HNSW16"])
def test_another_head_is_refused_at_load_and_at_add(trained, tmp_path, ann):
    root, _, _ = trained
    build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "index.h5", head=root / "head",
                ann=AnnConfig(ann, exact_below=1, tune_queries=20))
    other = load_head(root / "other").identity
    with pytest.raises(IndexFileError, match=rf"built with head .* but {root / 'other'} is head {other}"):
        SearchEngine.load(tmp_path / "index.h5", head=root / "other")
    with pytest.raises(IndexFileError, match=rf"built with head sha256:\w+, not {other}"):
        build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "index.h5", head=root / "other", add=True)
    with pytest.raises(IndexFileError, match=r"not none \(raw vectors\)"):
        build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "index.h5", add=True)


def test_query_cli_refuses_another_head(trained, tmp_path, capsys):
    root, _, _ = trained
    build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "index.h5", head=root / "head")
    make_image().save(tmp_path / "photo.jpg")
    assert query_main([str(tmp_path / "photo.jpg"), "--index", str(tmp_path / "index.h5"),
                       "--head", str(root / "other")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rebuild the index with this head" in err[0]


@pytest.mark.parametrize("ann", ["exact", "HNSW16"])
def test_evaluate_reports_the_head_beside_the_raw_baseline(trained, tmp_path, ann):
    root, vectors, labels = trained
    build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "index.h5", head=root / "head",
                ann=AnnConfig(ann, exact_below=1, tune_queries=20))
    assert load_index(tmp_path / "index.h5").approximate == (ann != "exact")
    report = evaluate(tmp_path / "index.h5", root / "v.h5", root / "manifest.jsonl", ks=(1, 60))
    assert set(report.accuracy) == {"raw", "head"} and report.queries["all"] == 30 and not report.notes
    head = load_head(root / "head")
    for method, transform, metric in (("raw", lambda v: v, "cosine"), ("head", head.embed, "euclidean")):
        hits = []
        for row in [r for r in range(len(labels)) if r % 6 < 3 and labels[r] >= 30]:
            gallery = [r for r in range(len(labels)) if r % 6 >= 3 and labels[r] % 2 == labels[row] % 2]
            distances = cdist(transform(vectors[[row]]), transform(vectors[gallery]), metric)[0]
            hits.append(labels[gallery[int(np.argmin(distances))]] == labels[row])
        assert report.accuracy[method]["all"][1] == pytest.approx(np.mean(hits))
        assert report.accuracy[method]["all"][60] == 1.0  # the whole category


def test_evaluate_says_when_the_baseline_is_missing(trained, tmp_path, capsys):
    root, vectors, labels = trained
    build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "index.h5", head=root / "head")
    street = [i for i in range(len(labels)) if i % 6 < 3]
    write_vectors(tmp_path / "street.h5", Vectors(np.array([f"street/{i}.jpg" for i in street], dtype=object),
                                                 vectors[street], dict(ATTRS, dim=DIM)))
    code = evaluate_main(["--index", str(tmp_path / "index.h5"), "--vectors", str(tmp_path / "street.h5"),
                          "--manifest", str(root / "manifest.jsonl"), "--out", str(tmp_path / "report")])
    assert code == 0
    out = capsys.readouterr().out
    assert "trained head" in out and "raw baseline left out: 120 of the index's 120 shop photos" in out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"head"} and (tmp_path / "report" / "topk.png").stat().st_size > 1000


def test_float16_index_through_the_head_ranks_like_float32(trained, tmp_path):
    """--dtype float16 with a head: embeddings after the head stored in half the bytes, same products found,
    distances within float16 rounding of the float32 index's."""
    root, vectors, _ = trained
    full, _ = build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "f32.h5", head=root / "head")
    half, _ = build_index(root / "v.h5", root / "manifest.jsonl", tmp_path / "f16.h5", head=root / "head",
                          dtype="float16")
    assert half.embeddings.dtype == np.float16 and half.attrs["head"] == full.attrs["head"]
    np.testing.assert_allclose(half.embeddings[:], full.embeddings[:], rtol=1e-3, atol=1e-3)
    queries = vectors[::6][:10]
    found32 = SearchEngine.load(tmp_path / "f32.h5").search_vectors(queries, k=3)
    found16 = SearchEngine.load(tmp_path / "f16.h5").search_vectors(queries, k=3)
    for a, b in zip(found32, found16):
        assert a[0].product == b[0].product
        np.testing.assert_allclose([m.distance for m in b], [m.distance for m in a], rtol=1e-2, atol=1e-2)
