import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common import LockHeld, WriterLock, atomic_path, atomic_write


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target) as stream:
        stream.write("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as stream:
            stream.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_replaces_a_folder_as_a_whole(tmp_path):
    for version in ("1", "2"):
        with atomic_path(tmp_path / "head") as temp:
            temp.mkdir()
            (temp / "model").write_text(version)
            (temp / "config").write_text(version)
    assert {p.name: p.read_text() for p in (tmp_path / "head").iterdir()} == {"model": "2", "config": "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    with WriterLock(tmp_path / "v.h5"):
        with pytest.raises(LockHeld, match=r"v\.h5: another run is writing it: pid \d+ on "):
            with WriterLock(tmp_path / "v.h5"):
                pass
    with WriterLock(tmp_path / "v.h5"):  # released: free again
        pass
    assert not (tmp_path / "v.h5.lock").exists()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    script = textwrap.dedent(f"""
        import os
        from common import WriterLock
        lock = WriterLock({str(tmp_path / 'v.h5')!r}).__enter__()
        os._exit(9)  # dies holding it, without cleaning up
    """)
    subprocess.run([sys.executable, "-c", script], check=False)
    assert (tmp_path / "v.h5.lock").exists()
    with WriterLock(tmp_path / "v.h5"):
        pass


def test_wait_gives_up_after_its_timeout(tmp_path):
    with WriterLock(tmp_path / "v.h5"):
        with pytest.raises(LockHeld):
            with WriterLock(tmp_path / "v.h5", wait=True, timeout=0.5):
                pass


def test_a_garbled_lock_file_left_behind_is_taken_over(tmp_path):
    for garbage in ("[" * 100_000, "[1, 2]", "\xff not json"):
        (tmp_path / "v.h5.lock").write_text(garbage)
        with WriterLock(tmp_path / "v.h5"):
            pass


def test_the_next_writer_removes_what_a_killed_writer_left_half_written(tmp_path):
    """A run killed inside ``atomic_path`` leaves its temporary file or folder (a head, a model, an index, a
    cache) beside the output; the next run to hold the output's lock removes it, and nothing else."""
    code = textwrap.dedent(f"""
        import os
        from common import WriterLock, atomic_path
        with WriterLock({str(tmp_path / "head")!r}), atomic_path({str(tmp_path / "head")!r}) as temp:
            temp.mkdir()
            (temp / "model.keras").write_bytes(b"half")
            os._exit(9)  # killed while writing
    """)
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode == 9
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(left) == 1 and (tmp_path / left[0] / "model.keras").exists()
    (tmp_path / ".head.4242.old").mkdir()  # a folder swap cut short
    (tmp_path / ".headless.1.2.part").write_text("another output's")
    (tmp_path / "head").mkdir()
    with WriterLock(tmp_path / "head"):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".headless.1.2.part", "head", "head.lock"]


def test_the_sweep_leaves_a_live_writer_of_a_dotted_sibling_alone(tmp_path):
    """Regression: ``.vectors.h5.*.part`` also matched the temporary file of a shard ``vectors.h5.1`` being written
    by another run under its own lock, and the merge into ``vectors.h5`` deleted it."""
    with WriterLock(tmp_path / "vectors.h5.1"), atomic_path(tmp_path / "vectors.h5.1") as temp:
        temp.write_bytes(b"a shard being written")
        (tmp_path / ".vectors.h5.1.77.old").mkdir()  # that shard's folder swap, not ours
        (tmp_path / ".vectors.h5.12.34.part").write_text("ours, left by a killed run")
        with WriterLock(tmp_path / "vectors.h5"):
            assert temp.exists() and (tmp_path / ".vectors.h5.1.77.old").exists()
            assert not (tmp_path / ".vectors.h5.12.34.part").exists()


def test_a_stale_temp_that_cannot_be_removed_neither_stops_the_writer_nor_keeps_the_lock(tmp_path, monkeypatch):
    """Regression: the sweep raised out of ``WriterLock.__enter__`` with the lock held and never released (a file of
    another user in a shared sticky folder cannot be removed): the run failed, and its process kept the lock."""
    from common import atomic

    (tmp_path / ".v.h5.1.2.part").write_text("another user's")

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "_remove", refuse)
    with WriterLock(tmp_path / "v.h5"):
        pass
    with WriterLock(tmp_path / "v.h5"):  # released: taken again at once
        pass
