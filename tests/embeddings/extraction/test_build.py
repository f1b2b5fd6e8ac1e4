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


def test_nothing_to_embed_is_a_one_line_error_and_writes_no_cache(tmp_path, capsys):
    from embeddings.build import main

    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg"}\n')  # a bad line: no kind
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    for source, why in ((["--manifest", str(tmp_path / "m.jsonl")], "the manifest lists no image to embed (1 bad line"),
                        (["--images", str(tmp_path / "photos")], "no image to embed in this folder or below")):
        code = main([*source, "--out", str(tmp_path / "v.h5"), "--backbone", "mobilenet_v2", "--weights", "none",
                     "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and why in err[0], err
    assert not (tmp_path / "v.h5").exists()


def test_an_engine_given_to_a_build_with_nothing_to_embed_is_still_closed(tmp_path):
    """Regression: ``build`` closes the engine it is given at the end; the nothing-to-embed error left it open (a
    Ray engine keeps the Ray it started running)."""

    class Engine:
        closed = False

        def close(self):
            Engine.closed = True

    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match="no image to embed"):
        build(BuildConfig(images=tmp_path / "photos", out=tmp_path / "v.h5"), engine=Engine())
    assert Engine.closed


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A PNG whose header declares ``width x height`` pixels, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_skipped_as_unreadable_and_the_build_goes_on(tiny_extractor, tmp_path):
    manifest = write_manifest(tmp_path, 4)
    (tmp_path / "out" / "shop" / "1.jpg").write_bytes(bomb_png())
    summary = build(BuildConfig(out=tmp_path / "v.h5", manifest=manifest, batch_size=2), tiny_extractor)
    assert summary.computed == 3
    assert [key for key, _ in summary.failures] == ["shop/1.jpg"]
    assert "too large" in summary.failures[0][1]
    assert sorted(read_vectors(tmp_path / "v.h5").ids) == ["shop/0.jpg", "shop/2.jpg", "shop/3.jpg"]


def hostile_manifest(tmp_path: Path) -> Path:
    """Two good lines, then lines that must never be embedded: outside paths, not JSON, no kind."""
    manifest = write_manifest(tmp_path, 2)
    outside = tmp_path / "x.jpg"
    make_image(40, 40, seed=9).save(outside)
    lines = [{"path": "../x.jpg", "kind": "shop", "photo": 7, "product": 7, "category": "bags"},
             {"path": str(outside), "kind": "shop", "photo": 8, "product": 8, "category": "bags"}]
    with manifest.open("a") as handle:
        handle.write("".join(json.dumps(line) + "\n" for line in lines))
        handle.write('["a list"]\n{"path": "shop/0.jpg", "photo": 0, "product": 0, "category": "bags"}\n')
    return manifest


def test_bad_manifest_lines_are_skipped_and_reported_with_file_and_line(tiny_extractor, tmp_path):
    manifest = hostile_manifest(tmp_path)
    summary = build(BuildConfig(out=tmp_path / "v.h5", manifest=manifest), tiny_extractor)
    assert sorted(read_vectors(tmp_path / "v.h5").ids) == ["shop/0.jpg", "shop/1.jpg"]
    assert [p.split(": ")[0] for p in summary.problems] == [f"{manifest}:{n}" for n in (3, 4, 5, 6)]
    assert "leaves the manifest's folder" in summary.problems[0] and "absolute" in summary.problems[1]
    assert any("bad manifest lines skipped: 4" in line for line in summary.lines())


def test_strict_makes_a_bad_manifest_line_a_one_line_error(tmp_path):
    manifest = hostile_manifest(tmp_path)
    result = subprocess.run([sys.executable, "-m", "embeddings.build", "--manifest", str(manifest), "--strict",
                             "--out", str(tmp_path / "v.h5"), "--weights", "none"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {manifest}:3: 'path' '../x.jpg' leaves the manifest's folder"]
    assert not (tmp_path / "v.h5").exists()


def test_a_cache_refuses_vectors_of_another_decoding_or_precision(tiny_extractor, tmp_path):
    from embeddings import CacheError, Extractor
    from tests.conftest import TINY

    manifest = write_manifest(tmp_path, 2)
    build(BuildConfig(out=tmp_path / "v.h5", manifest=manifest), tiny_extractor)
    assert read_vectors(tmp_path / "v.h5").attrs["decode"] == "exact"
    assert read_vectors(tmp_path / "v.h5").attrs["precision"] == "float32"
    for options in ({"decode": "fast"}, {"precision": "bfloat16"}):
        other = Extractor(TINY, weights=None, **options)
        key, value = next(iter(options.items()))
        with pytest.raises(CacheError, match=rf"{key}: expected '{value}', found '"):
            build(BuildConfig(out=tmp_path / "v.h5", manifest=manifest), other)
    assert len(read_vectors(tmp_path / "v.h5").ids) == 2


def test_a_second_build_on_the_same_cache_is_refused_and_nothing_is_lost(tiny_extractor, tmp_path):
    import threading

    from common import LockHeld
    from embeddings.build import main

    first = write_manifest(tmp_path / "a", 12)
    second = write_manifest(tmp_path / "b", 6)
    started, release = threading.Event(), threading.Event()

    class Slow(type(tiny_extractor)):
        def batches(self, items):
            for number, batch in enumerate(tiny_extractor.batches(items)):
                if number == 1:
                    started.set()
                    release.wait(30)
                yield batch

    slow = Slow.__new__(Slow)
    slow.__dict__.update(tiny_extractor.__dict__)
    results = {}
    runner = threading.Thread(target=lambda: results.update(
        a=build(BuildConfig(out=tmp_path / "v.h5", manifest=first, batch_size=4), slow)))
    runner.start()
    try:
        assert started.wait(30)
        with pytest.raises(LockHeld, match="another run is writing it"):
            build(BuildConfig(out=tmp_path / "v.h5", manifest=second), tiny_extractor)
        assert main(["--manifest", str(second), "--out", str(tmp_path / "v.h5"), "--weights", "none",
                     "--backbone", "mobilenet_v2", "--quiet"]) == 2
    finally:
        release.set()
        runner.join(60)
    assert results["a"].computed == 12
    assert sorted(read_vectors(tmp_path / "v.h5").ids) == sorted(f"shop/{i}.jpg" for i in range(12))


def test_the_local_engine_never_imports_ray(tmp_path):
    manifest = write_manifest(tmp_path, 2)
    code = ("import sys; from embeddings import build, BuildConfig, Extractor; from tests.conftest import TINY; "
            f"s = build(BuildConfig(out={str(tmp_path / 'v.h5')!r}, manifest={str(manifest)!r}), Extractor(TINY, None)); "
            "assert s.computed == 2; print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    script = tmp_path / "run.py"
    script.write_text(f"if __name__ == '__main__':\n    {code}\n")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_ctrl_c_keeps_finished_batches_and_a_rerun_completes(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group, decoding processes included) on the build
    command: exit 130, the cache readable with the finished batches, and a rerun computes only the rest."""
    import os
    import signal
    import time

    folder = tmp_path / "images"
    folder.mkdir()
    count = 300
    for index in range(count):
        make_image(40, 32, seed=index).save(folder / f"{index:03d}.jpg")
    script = tmp_path / "build_tiny.py"  # the build command, with the tiny stand-in backbone registered
    script.write_text("import sys\nfrom embeddings.extraction.backbones import BACKBONES\n"
                      "from tests.conftest import TINY\nBACKBONES['tiny'] = TINY\nfrom embeddings.build import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, str(script), "--images", str(folder), "--out", str(tmp_path / "v.h5"),
               "--backbone", "tiny", "--weights", "none", "--batch-size", "1", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(read_vectors(tmp_path / "v.h5").ids) >= 2:
                break
        except Exception:  # noqa: BLE001 (not created yet)
            pass
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    kept = len(read_vectors(tmp_path / "v.h5").ids)
    assert 2 <= kept < count
    assert "run the same command to resume" in out
    command[command.index("--batch-size") + 1] = "64"  # resume does not depend on the batch size; 1 is slow
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"already cached: {kept}; computed: {count - kept}" in again.stdout
    assert sorted(read_vectors(tmp_path / "v.h5").ids) == sorted(f"{i:03d}.jpg" for i in range(count))


def test_a_ctrl_c_during_an_append_lets_it_finish_then_stops(tiny_extractor, tmp_path, monkeypatch):
    import signal

    from embeddings.extraction.cache import CacheWriter

    real = CacheWriter.append

    def interrupted(self, ids, vectors, labels=None):  # Ctrl-C arrives while the rows are being written
        signal.raise_signal(signal.SIGINT)
        return real(self, ids, vectors, labels)

    monkeypatch.setattr(CacheWriter, "append", interrupted)
    rows = tiny_extractor.batch_size  # the batch during which Ctrl-C came is written whole, then the build stops
    summary = build(BuildConfig(out=tmp_path / "v.h5", manifest=write_manifest(tmp_path, rows + 2)), tiny_extractor)
    assert summary.interrupted and summary.computed == rows
    cache = read_vectors(tmp_path / "v.h5")
    assert len(cache.ids) == len(cache.vectors) == rows
