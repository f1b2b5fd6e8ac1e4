import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embeddings import BuildConfig, build, in_shard, merge, read_vectors
from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[3]


def write_manifest(tmp_path: Path, count: int, broken: int = 0) -> Path:
    out = tmp_path / "out"
    (out / "shop").mkdir(parents=True)
    records = []
    for index in range(count):
        path = f"shop/{index}.jpg"
        if index < broken:
            (out / path).write_bytes(b"garbage")
        else:
            make_image(40, 40, seed=index).save(out / path)
        records.append({"path": path, "kind": "shop", "photo": index, "product": index, "category": "bags",
                        "split": "train", "bbox": None})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out / "manifest.jsonl"


def test_build_from_manifest_is_resumable(tiny_extractor, tmp_path):
    manifest = write_manifest(tmp_path, 10, broken=1)
    config = BuildConfig(out=tmp_path / "v.h5", manifest=manifest, batch_size=4)
    first = build(config, tiny_extractor)
    assert (first.computed, first.present, len(first.failures)) == (9, 0, 1)
    assert first.failures[0][0] == "shop/0.jpg"
    cache = read_vectors(tmp_path / "v.h5")
    assert sorted(cache.ids) == sorted(f"shop/{i}.jpg" for i in range(1, 10))
    np.testing.assert_allclose(cache.vectors[list(cache.ids).index("shop/3.jpg")],
                               tiny_extractor.embed([tmp_path / "out" / "shop/3.jpg"])[0], rtol=1e-5)
    second = build(config, tiny_extractor)
    assert (second.computed, second.present) == (0, 9)
    assert len(read_vectors(tmp_path / "v.h5").ids) == 9


def test_shards_partition_the_ids_and_merge_back(tiny_extractor, tmp_path):
    manifest = write_manifest(tmp_path, 12)
    parts = []
    for index in range(3):
        part = tmp_path / f"part{index}.h5"
        build(BuildConfig(out=part, manifest=manifest, shard=(index, 3)), tiny_extractor)
        parts.append(part)
    sizes = [len(read_vectors(p).ids) for p in parts]
    assert sum(sizes) == 12 and all(0 < s < 12 for s in sizes)
    assert merge(parts, tmp_path / "all.h5").rows == 12
    merged = read_vectors(tmp_path / "all.h5")
    whole = build(BuildConfig(out=tmp_path / "whole.h5", manifest=manifest), tiny_extractor)
    assert whole.computed == 12
    reference = read_vectors(tmp_path / "whole.h5")
    np.testing.assert_allclose(merged.vectors[merged.rows(reference.ids)], reference.vectors, rtol=1e-5)
    assert [in_shard("shop/1.jpg", (i, 3)) for i in range(3)].count(True) == 1


def test_labelled_folder_stores_labels(tiny_extractor, tmp_path):
    for label in ("cats", "dogs"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(2):
            make_image(30, 30, seed=index).save(tmp_path / "images" / label / f"{index}.png")
    build(BuildConfig(out=tmp_path / "v.h5", images=tmp_path / "images"), tiny_extractor)
    cache = read_vectors(tmp_path / "v.h5")
    assert dict(zip(cache.ids, cache.labels)) == {"cats/0.png": "cats", "cats/1.png": "cats",
                                                   "dogs/0.png": "dogs", "dogs/1.png": "dogs"}


def test_bad_configuration(tmp_path):
    with pytest.raises(ValueError, match="exactly one of manifest or images"):
        build(BuildConfig(out=tmp_path / "v.h5"))
    with pytest.raises(ValueError, match=r"shard must be I/N with 0 <= I < N, got 3/3"):
        build(BuildConfig(out=tmp_path / "v.h5", images=tmp_path, shard=(3, 3)))


def test_cli_errors_are_one_line_with_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "embeddings.build", "--manifest", str(tmp_path / "m.jsonl"),
                             "--out", str(tmp_path / "v.h5")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'm.jsonl'}: manifest does not exist"
