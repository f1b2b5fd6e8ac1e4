"""Write a file so that readers see the old file or the whole new one, never a part, even after a power loss.

The new content goes to a temporary name unique to this process and thread, is flushed to disk
(``fsync``), renamed over the target, and the folder's entry is flushed too.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import IO, Collection, Iterator

logger = logging.getLogger(__name__)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove what runs killed while writing ``path`` left beside it (``atomic_path``'s ``.<name>.<pid>.<thread>.part``
    files or folders, and ``.<name>.<pid>.old`` from a folder swap cut short). Only ``path``'s writer may call it
    (``WriterLock`` does, once it holds the lock): no live writer has one then."""
    path = Path(path)
    # exactly these names: a looser pattern also matches the live temporaries of an output named ``path.name.1``
    ours = re.compile(rf"\.{re.escape(path.name)}\.(\d+\.\d+\.part|\d+\.old)")
    found = sorted(p for p in path.parent.glob(f".{glob.escape(path.name)}.*") if ours.fullmatch(p.name))
    for temp in found:
        logger.warning("%s: removing %s, left by a run that was killed while writing it", path, temp.name)
        try:
            _remove(temp)
        except OSError as error:  # housekeeping: the run does not need it gone, and must not stop for it
            logger.warning("%s: cannot remove %s (%s)", path, temp.name, error)
    return found


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is); a no-op where unsupported."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def fsync_file(path: str | Path) -> None:
    """Flush a file's content to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (by any library); on success it is
    flushed and renamed over ``path``; on any error it is removed and ``path`` is left as it was.

    Works for files and folders (a folder's files are flushed one by one; an existing folder at
    ``path`` is replaced as a whole: moved aside, then removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(path)
    try:
        yield temp
        if temp.is_dir():
            for item in temp.rglob("*"):
                if item.is_file():
                    fsync_file(item)
            _replace_dir(temp, path)
        else:
            fsync_file(temp)
            os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        _remove(temp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file to write ``path``'s new content; flushed and renamed over ``path`` on success."""
    binary = "b" in mode
    with atomic_path(path) as temp:
        with open(temp, mode, encoding=None if binary else encoding) as stream:
            yield stream
            stream.flush()


def check_replaceable_folder(path: str | Path, known: Collection[str], what: str) -> None:
    """Refuse an output folder that ``atomic_path`` must not replace whole: a file, or a folder holding files
    other than ``known`` (a user's other work would be deleted with it).

    Raises:
        ValueError: naming the folder and up to three of the other files.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; give a folder for the {what}")
    others = sorted(p.name for p in path.iterdir() if p.name not in known) if path.is_dir() else []
    if others:
        raise ValueError(f"{path}: holds other files than a {what}'s ({', '.join(others[:3])}); it would be "
                         f"replaced as a whole: choose a new folder")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_dir(temp: Path, path: Path) -> None:
    """Put the folder ``temp`` at ``path``: a rename where nothing is there, else an atomic swap (where the
    system has one; elsewhere two renames) and the old folder removed."""
    if not path.exists():
        os.replace(temp, path)
        return
    if _exchange(temp, path):
        _remove(temp)  # now holds the old content
        return
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    os.replace(path, old)
    os.replace(temp, path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
