import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from embeddings import CacheError, CacheWriter, Vectors, merge, read_attrs, read_vectors, write_vectors
from embeddings.extraction.cache import iter_chunks, read_ids, read_rows
from tests.conftest import random_vectors

ROOT = Path(__file__).resolve().parents[3]
ATTRS = {"backbone": "vgg19", "layer": "fc2", "weights": "imagenet", "input_size": [224, 224], "dim": 6}


def test_append_then_read_back(tmp_path):
    path = tmp_path / "v.h5"
    vectors = random_vectors(5, 6)
    with CacheWriter(path, ATTRS) as writer:
        assert writer.append(["a", "b", "c"], vectors[:3]) == 3
        assert writer.append(["c", "d", "e"], vectors[2:5]) == 2  # "c" is not written twice
    cache = read_vectors(path)
    assert list(cache.ids) == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(cache.vectors, vectors)
    assert cache.attrs["backbone"] == "vgg19" and "keras" in cache.attrs["versions"]


def test_resume_skips_ids_already_written(tmp_path):
    path = tmp_path / "v.h5"
    with CacheWriter(path, ATTRS) as writer:
        writer.append(["a"], random_vectors(1, 6))
    with CacheWriter(path, ATTRS) as writer:
        assert writer.ids == {"a"}
        assert writer.append(["a", "b"], random_vectors(2, 6)) == 1
    assert list(read_vectors(path).ids) == ["a", "b"]


def test_other_backbone_or_weights_is_a_clear_error(tmp_path):
    path = tmp_path / "v.h5"
    with CacheWriter(path, ATTRS) as writer:
        writer.append(["a"], random_vectors(1, 6))
    with pytest.raises(CacheError, match=r"backbone: expected 'resnet50', found 'vgg19'"):
        CacheWriter(path, dict(ATTRS, backbone="resnet50")).__enter__()
    with pytest.raises(CacheError, match=r"weights: expected 'random:0', found 'imagenet'"):
        read_vectors(path, expected=dict(ATTRS, weights="random:0"))


def test_wrong_shape_is_refused(tmp_path):
    with CacheWriter(tmp_path / "v.h5", ATTRS) as writer:
        with pytest.raises(ValueError, match=r"expected vectors of shape \(2, 6\), got \(2, 5\)"):
            writer.append(["a", "b"], random_vectors(2, 5))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vector cache does not exist"):
        read_vectors(tmp_path / "nope.h5")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="not a readable HDF5 vector cache"):
        read_vectors(corrupt)


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from embeddings import CacheWriter
    attrs = {"backbone": "vgg19", "layer": "fc2", "weights": "imagenet", "input_size": [224, 224], "dim": 512}
    with CacheWriter(sys.argv[1], attrs) as writer:
        start = len(writer.ids)
        for step in range(100000):
            ids = [str(start + 16 * step + i) for i in range(16)]
            writer.append(ids, np.full((16, 512), float(ids[0]), dtype=np.float32))
            print(start + 16 * (step + 1), flush=True)
""")


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_killed_writer_leaves_a_readable_cache_that_resumes(tmp_path, delay):
    path = tmp_path / "v.h5"
    for _ in range(2):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE)
        process.stdout.readline()  # at least one batch written
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        cache = read_vectors(path)
        assert len(cache.ids) >= 16 and len(cache.ids) % 16 == 0
        assert list(cache.ids) == [str(i) for i in range(len(cache.ids))]
        np.testing.assert_array_equal(cache.vectors[:, 0], (np.arange(len(cache.ids)) // 16 * 16).astype(np.float32))
    before = len(read_vectors(path).ids)
    with CacheWriter(path, dict(ATTRS, dim=512)) as writer:  # repairs and resumes
        writer.append([str(before)], np.zeros((1, 512), np.float32))
    assert len(read_vectors(path).ids) == before + 1


SLOW_WRITER = textwrap.dedent("""
    import logging, os, sys, time, numpy as np
    from common import LockHeld
    from embeddings import CacheWriter
    logging.basicConfig(level=logging.WARNING)
    path, prefix, batches, wait, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "wait", sys.argv[5]
    attrs = {"backbone": "vgg19", "layer": "fc2", "weights": "imagenet", "input_size": [224, 224], "dim": 6}
    try:
        with CacheWriter(path, attrs, **({"wait": True} if wait else {})) as writer:
            step = 0
            while step < batches or not os.path.exists(stop):  # at least ``batches``, then until told to stop
                writer.append([f"{prefix}{step}-{i}" for i in range(4)], np.full((4, 6), step, np.float32))
                print(step, flush=True)
                time.sleep(0.02)
                step += 1
    except LockHeld as error:
        print(error, file=sys.stderr)
        sys.exit(3)
""")


def _writer(path, prefix, batches, stop, wait=False):
    return subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path), prefix, str(batches),
                             "wait" if wait else "fail", str(stop)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("wait", [False, True])
def test_a_second_writer_never_loses_the_first_writers_rows(tmp_path, wait):
    """Regression: a second build on the same cache "repaired" (replaced) the file the first was still
    writing; both exited 0 and the first build's later rows were gone."""
    path, stop = tmp_path / "v.h5", tmp_path / "stop"
    first = _writer(path, "a", 10, stop)
    first.stdout.readline()  # the first writer holds the file and has written a batch
    second = _writer(path, "b", 5, tmp_path, wait=wait)  # writes 5 batches once it has the file
    if wait:
        for line in second.stderr:  # the second is queued behind the first
            if "waiting for" in line:
                break
    else:
        second.wait(timeout=120)
    stop.touch()
    first_batches = len(first.communicate(timeout=120)[0].split()) + 1
    codes = {"a": first.returncode, "b": second.wait(timeout=120)}
    errors = second.stderr.read()
    ids = set(read_vectors(path).ids)
    for name, batches in (("a", first_batches), ("b", 5)):
        if codes[name] == 0:
            assert {f"{name}{step}-{i}" for step in range(batches) for i in range(4)} <= ids, f"writer {name} lost rows"
    assert codes["a"] == 0
    if wait:
        assert codes["b"] == 0 and len(ids) == 4 * (first_batches + 5)
    else:
        assert codes["b"] == 3 and "another run is writing it: pid" in errors and len(ids) == 4 * first_batches


def test_merge_checks_that_parts_agree(tmp_path):
    a = Vectors(np.array(["x", "y"], dtype=object), random_vectors(2, 6, 1), ATTRS)
    b = Vectors(np.array(["y", "z"], dtype=object), random_vectors(2, 6, 2), ATTRS)
    write_vectors(tmp_path / "a.h5", a)
    write_vectors(tmp_path / "b.h5", b)
    assert merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5").rows == 3
    merged = read_vectors(tmp_path / "m.h5")
    assert list(merged.ids) == ["x", "y", "z"]
    np.testing.assert_array_equal(merged.vectors, np.concatenate([a.vectors, b.vectors[1:]]))
    write_vectors(tmp_path / "c.h5", Vectors(b.ids, b.vectors, dict(ATTRS, weights="sha256:0123")))
    with pytest.raises(CacheError, match=r"c.h5: built with other settings \(weights"):
        merge([tmp_path / "a.h5", tmp_path / "c.h5"], tmp_path / "m2.h5")


def _labelled_cache(path, count=50, dim=6):
    vectors = random_vectors(count, dim, 3)
    ids = np.array([f"id{i}" for i in range(count)], dtype=object)
    labels = np.array([f"class{i % 3}" for i in range(count)], dtype=object)
    write_vectors(path, Vectors(ids, vectors, dict(ATTRS, dim=dim), labels))
    return ids, vectors, labels


def test_iter_chunks_streams_every_row_in_order(tmp_path):
    ids, vectors, _ = _labelled_cache(tmp_path / "v.h5")
    chunks = list(iter_chunks(tmp_path / "v.h5", chunk_rows=16))
    assert [len(chunk_ids) for chunk_ids, _ in chunks] == [16, 16, 16, 2]
    assert list(np.concatenate([c[0] for c in chunks])) == list(ids)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), vectors)
    assert list(read_ids(tmp_path / "v.h5")) == list(ids)


def test_read_rows_by_number_or_id_in_the_order_asked(tmp_path):
    ids, vectors, labels = _labelled_cache(tmp_path / "v.h5")
    rows = [47, 3, 3, 20, 0, 35]
    for chunk_rows in (None, 4):
        by_row = read_rows(tmp_path / "v.h5", rows, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(by_row.vectors, vectors[rows])
        assert list(by_row.ids) == list(ids[rows]) and list(by_row.labels) == list(labels[rows])
    by_id = read_rows(tmp_path / "v.h5", [f"id{r}" for r in rows], expected=ATTRS | {"dim": 6})
    np.testing.assert_array_equal(by_id.vectors, vectors[rows])
    assert read_rows(tmp_path / "v.h5", []).vectors.shape == (0, 6)
    with pytest.raises(CacheError, match=r"2 of the ids asked for are not in the cache \(first: 'nope'\)"):
        read_rows(tmp_path / "v.h5", ["id1", "nope", "nix"])
    with pytest.raises(CacheError, match=r"row 50 out of range \(the cache has 50 rows\)"):
        read_rows(tmp_path / "v.h5", [1, 50])
    with pytest.raises(CacheError, match="backbone: expected 'resnet50'"):
        read_rows(tmp_path / "v.h5", [1], expected={"backbone": "resnet50"})


def test_precision_and_decode_are_part_of_the_identity(tmp_path):
    path = tmp_path / "v.h5"
    write_vectors(path, Vectors(np.array(["a"], dtype=object), random_vectors(1, 6), ATTRS))  # an older file
    # an older file reads as float32 and exact decoding
    read_vectors(path, expected=dict(ATTRS, precision="float32", decode="exact"))
    with CacheWriter(path, dict(ATTRS, precision="float32", decode="exact")) as writer:
        writer.append(["b"], random_vectors(1, 6))
    with pytest.raises(CacheError, match=r"precision: expected 'bfloat16', found 'float32'"):
        CacheWriter(path, dict(ATTRS, precision="bfloat16", decode="exact")).__enter__()
    with pytest.raises(CacheError, match=r"decode: expected 'fast', found 'exact'"):
        CacheWriter(path, dict(ATTRS, decode="fast")).__enter__()
    mixed = tmp_path / "bf16.h5"
    with CacheWriter(mixed, dict(ATTRS, precision="bfloat16", decode="fast")) as writer:
        writer.append(["a"], random_vectors(1, 6))
    with pytest.raises(CacheError, match=r"precision: expected 'float32', found 'bfloat16'; decode: expected 'exact'"):
        read_vectors(mixed, expected=ATTRS)  # a description without them means float32, exact
    with pytest.raises(CacheError, match="precision"):
        merge([path, mixed], tmp_path / "m.h5")
    assert list(read_vectors(path).ids) == ["a", "b"]


def _peak_mib(function) -> float:
    import tracemalloc

    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_resume_and_repair_do_not_load_the_vectors(tmp_path, monkeypatch):
    path = tmp_path / "v.h5"
    attrs = dict(ATTRS, dim=4096)
    with CacheWriter(path, attrs) as writer:  # 2,000 x 4096 float32: 31 MiB of vectors
        for start in range(0, 2000, 250):
            writer.append([str(i) for i in range(start, start + 250)], np.ones((250, 4096), np.float32))

    def resume():
        with CacheWriter(path, attrs) as writer:
            assert len(writer.ids) == 2000

    assert _peak_mib(resume) < 6
    import embeddings.extraction.cache as cache
    import embeddings.extraction.cache_writer as cache_writer

    monkeypatch.setattr(cache, "CHUNK_BYTES", 1 << 20)
    assert _peak_mib(lambda: cache_writer._repair(path, read_attrs(path)).close()) < 6
    assert len(read_ids(path)) == 2000
    np.testing.assert_array_equal(read_rows(path, [1999]).vectors, np.ones((1, 4096), np.float32))


def test_a_writer_without_labels_is_refused_on_a_labelled_cache(tmp_path):
    """Regression: an unlabelled build appended to a labelled cache left its labels shorter than its ids,
    so every later reader paired rows with the wrong labels (or failed with an IndexError)."""
    ids, vectors, labels = _labelled_cache(tmp_path / "v.h5", count=5)
    with pytest.raises(CacheError, match=r"v.h5: has labels but this build has none"):
        CacheWriter(tmp_path / "v.h5", ATTRS).__enter__()
    cache = read_vectors(tmp_path / "v.h5")
    assert list(cache.ids) == list(ids) and list(cache.labels) == list(labels)
    with CacheWriter(tmp_path / "v.h5", ATTRS, labelled=True) as writer:  # the lock was released
        writer.append(["new"], random_vectors(1, 6), ["class9"])
    assert list(read_rows(tmp_path / "v.h5", ["new"]).labels) == ["class9"]


def test_the_next_writer_removes_temporary_files_of_killed_runs_and_only_those(tmp_path):
    """Regression: a writer killed while repairing the cache (a copy of every row) left its temporary file
    for good. The next writer, holding the lock, removes the cache's own leftovers, not other files'."""
    path = tmp_path / "v.h5"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        import embeddings.extraction.cache_writer as cache_writer
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        cache_writer.create = die  # killed while laying out the new file, inside its temporary name
        with cache_writer.CacheWriter(sys.argv[1], {"backbone": "b", "dim": 6}):
            pass
    """), str(path)], cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert len(list(tmp_path.glob(".v.h5.*.part"))) == 1
    (tmp_path / ".v.h5x.1.2.part").write_text("another file's")
    with CacheWriter(path, {"backbone": "b", "dim": 6}) as writer:
        writer.append(["a"], random_vectors(1, 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v.h5x.1.2.part", "v.h5"]


HOLD_OPEN = textwrap.dedent("""
    import sys, time, h5py
    handle = h5py.File(sys.argv[1], sys.argv[2], libver="latest")  # "a": as a writer opening the cache
    print("open", flush=True)
    time.sleep(float(sys.argv[3]))
    if sys.argv[2] == "a":
        handle.swmr_mode = True  # from here readers may open it
    time.sleep(30)
""")


def test_a_reader_waits_for_the_instant_a_writer_opens_the_cache(tmp_path):
    """Regression: a reader opening the cache while a writer held HDF5's lock (between opening the file
    and switching to SWMR) failed with 'not a readable HDF5 vector cache' (1 read in ~300 in a loop)."""
    path = tmp_path / "v.h5"
    _labelled_cache(path, count=5)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path), "a", "0.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        assert list(read_ids(path)) == [f"id{i}" for i in range(5)]
    finally:
        holder.kill()
        holder.wait()


def test_a_reader_opening_the_repaired_cache_does_not_fail_the_writer(tmp_path, monkeypatch):
    """Regression: a writer that found the cache open in a reader copied it and reopened the copy; a reader
    opening the copy in between made the writer fail with BlockingIOError (HDF5's file lock)."""
    import embeddings.extraction.cache_writer as cache_writer

    path = tmp_path / "v.h5"
    _labelled_cache(path, count=5)
    readers = []
    original = cache_writer._repair

    def repair_then_a_reader_opens(*args):
        result = original(*args)
        readers.append(subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path), "r", "0"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        readers[-1].stdout.readline()  # the reader has the new file open (or could not open it)
        return result

    monkeypatch.setattr(cache_writer, "_repair", repair_then_a_reader_opens)
    first = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path), "r", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "open\n"  # a reader holds the old file: the writer copies it
        with CacheWriter(path, ATTRS, labelled=True) as writer:
            writer.append(["new"], random_vectors(1, 6), ["class9"])
        assert list(read_ids(path))[-1] == "new" and len(readers) == 1
    finally:
        for process in [first] + readers:
            process.kill()
            process.wait()
