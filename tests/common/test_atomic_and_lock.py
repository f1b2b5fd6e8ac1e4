import subprocess
import sys
import textwrap

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
