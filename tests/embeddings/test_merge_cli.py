"""``embeddings.merge``: streaming copy (first id wins), bounded memory, and its command's errors."""

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from common import WriterLock
from embeddings import CacheWriter, Vectors, merge, read_vectors, write_vectors
from embeddings.merge import main
from tests.conftest import random_vectors

ROOT = Path(__file__).resolve().parents[2]
ATTRS = {"backbone": "vgg19", "layer": "fc2", "weights": "imagenet", "input_size": [224, 224], "dim": 6}


def _part(path, ids, seed, labels=None, **attrs):
    vectors = random_vectors(len(ids), 6, seed)
    write_vectors(path, Vectors(np.array(ids, dtype=object), vectors, dict(ATTRS, **attrs),
                                None if labels is None else np.array(labels, dtype=object)))
    return vectors


def test_first_occurrence_wins_across_and_within_chunks(tmp_path):
    a = _part(tmp_path / "a.h5", ["p", "q", "r", "s", "t"], 1, labels=list("LLMMN"))
    b = _part(tmp_path / "b.h5", ["s", "u", "p", "v"], 2, labels=list("MOLP"))
    summary = merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5", chunk_rows=2)
    assert (summary.rows, summary.duplicates) == (7, 2)
    merged = read_vectors(tmp_path / "m.h5")
    assert list(merged.ids) == ["p", "q", "r", "s", "t", "u", "v"]
    assert list(merged.labels) == list("LLMMNOP")
    np.testing.assert_array_equal(merged.vectors, np.concatenate([a, b[[1, 3]]]))
    assert merged.attrs["merged_from"] == [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*part"))


def test_merge_memory_is_one_chunk_not_the_parts(tmp_path, monkeypatch):
    """Regression: merge concatenated every part in memory (9.5 GB peak for two 1.6 GB parts)."""
    attrs = dict(ATTRS, dim=4096)
    for name in ("a", "b"):  # two parts of 1,500 x 4096 float32: 23 MiB each
        with CacheWriter(tmp_path / f"{name}.h5", attrs) as writer:
            for start in range(0, 1500, 250):
                writer.append([f"{name}{i}" for i in range(start, start + 250)], np.ones((250, 4096), np.float32))
    import embeddings.extraction.cache as cache

    monkeypatch.setattr(cache, "CHUNK_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5")
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < 6, f"merge peaked at {peak:.1f} MiB"
    assert len(read_vectors(tmp_path / "m.h5").ids) == 3000


def test_main_good_run(tmp_path, capsys):
    _part(tmp_path / "a.h5", ["x", "y"], 1)
    _part(tmp_path / "b.h5", ["y", "z"], 2)
    assert main([str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--out", str(tmp_path / "m.h5"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == (f"merged 2 parts: 3 vectors into {tmp_path / 'm.h5'} "
                                               "(1 duplicate ids skipped)")


def _error(capsys, argv) -> str:
    assert main(argv + ["--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_main_bad_inputs_are_one_line_exit_2(tmp_path, capsys):
    a, b, out = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "m.h5"
    _part(a, ["x"], 1)
    assert _error(capsys, [str(a), str(tmp_path / "nope.h5"), "--out", str(out)]) == \
        f"error: {tmp_path / 'nope.h5'}: vector cache does not exist"
    b.write_bytes(b"not a cache")
    assert _error(capsys, [str(a), str(b), "--out", str(out)]).startswith(
        f"error: {b}: not a readable HDF5 vector cache")
    _part(b, ["y"], 2, weights="random:0")
    assert _error(capsys, [str(a), str(b), "--out", str(out)]) == \
        f"error: {b}: built with other settings (weights: expected 'imagenet', found 'random:0')"
    _part(b, ["y"], 2, labels=["L"])
    assert "labels present in some parts and not in others" in _error(capsys, [str(a), str(b), "--out", str(out)])
    (tmp_path / "folder").mkdir()
    assert _error(capsys, [str(a), "--out", str(tmp_path / "folder")]) == \
        f"error: {tmp_path / 'folder'}: is a folder; give the merged cache's file name"
    assert "is also one of the parts" in _error(capsys, [str(a), "--out", str(a)])
    assert not out.exists()


def test_main_refuses_an_output_or_part_being_written(tmp_path, capsys):
    a, out = tmp_path / "a.h5", tmp_path / "m.h5"
    _part(a, ["x"], 1)
    for held in (out, a):
        with WriterLock(held):
            message = _error(capsys, [str(a), "--out", str(out)])
        assert message.startswith(f"error: {held.resolve() if held == a else held}: another run is writing it: pid ")
    assert main([str(a), "--out", str(out), "--quiet", "--wait"]) == 0


def test_command_line_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "embeddings.merge", str(tmp_path / "nope.h5"),
                             "--out", str(tmp_path / "m.h5")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.h5'}: vector cache does not exist"


def test_the_exported_functions_survive_importing_the_commands(tmp_path):
    """Regression: importing the command ``embeddings.merge`` (or ``embeddings.train``) rebound the package's
    ``merge`` (``train``) function to the module, and ``embeddings.merge(...)`` raised 'module is not callable'."""
    import embeddings
    import embeddings.merge  # noqa: F401
    import embeddings.train  # noqa: F401
    from embeddings import TrainConfig

    _part(tmp_path / "a.h5", ["x"], 1)
    assert embeddings.merge([tmp_path / "a.h5"], tmp_path / "m.h5").rows == 1
    with pytest.raises(FileNotFoundError, match="nope.h5: vector cache does not exist"):
        embeddings.train(TrainConfig(vectors=tmp_path / "nope.h5", out=tmp_path / "head"))


KILLED_MERGE = """
import os, signal, sys
import embeddings.extraction.shards as shards
original = shards.append_rows
def append_then_die(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # mid-copy: the temporary file holds one chunk
shards.append_rows = append_then_die
shards.merge(sys.argv[1:-1], sys.argv[-1], chunk_rows=2)
"""


def test_a_killed_merge_leaves_no_temporary_file_after_the_next_run(tmp_path):
    """Regression: a merge killed mid-copy left its temporary file (as large as the merge) beside OUT for
    good; the next run of the same output, holding its lock, removes it."""
    a = _part(tmp_path / "a.h5", ["p", "q", "r", "s"], 1)
    parts = [str(tmp_path / "a.h5"), str(tmp_path / "m.h5")]
    killed = subprocess.run([sys.executable, "-c", KILLED_MERGE, parts[0], parts[1]], cwd=ROOT,
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert len(list(tmp_path.glob(".m.h5.*.part"))) == 1 and not (tmp_path / "m.h5").exists()
    assert main([parts[0], "--out", parts[1], "--quiet"]) == 0
    assert list(tmp_path.glob(".m.h5.*")) == [] and not (tmp_path / "m.h5.lock").exists()
    np.testing.assert_array_equal(read_vectors(tmp_path / "m.h5").vectors, a)


@pytest.mark.parametrize("first", ["functions", "commands"])
def test_functions_and_commands_share_their_names_in_any_import_order(first):
    """In a fresh interpreter, whichever is imported first: ``from embeddings import merge, train`` call the
    functions and ``import embeddings.merge as cli`` gives the command with its ``main``."""
    functions = "from embeddings import merge, train\n"
    commands = "import embeddings.merge as merge_cli, embeddings.train as train_cli\n"
    check = textwrap.dedent("""
        from embeddings import merge as m, train as t
        assert callable(merge_cli.main) and callable(train_cli.main)
        for name, bound in (("merge", m), ("train", t)):
            try:
                bound([], "x") if name == "merge" else bound(None)
            except (ValueError, AttributeError) as error:
                print(name, type(error).__name__, error)
    """)
    code = (functions + commands if first == "functions" else commands + functions) + check
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["merge ValueError nothing to merge: give at least one cache",
                                          "train AttributeError 'NoneType' object has no attribute 'validate'"]
