"""Photos read straight from a ``.tar``, ``.tar.gz`` (``.tgz``, ``.tar.bz2``, ``.tar.xz``) or ``.zip`` archive.

Nothing is unpacked to disk. A zip and a plain tar are read member by member wherever the member
is. A compressed tar can only be read forwards cheaply (going back means decompressing from the
start), so the photos are handed out in archive order and the reader walks forwards once, keeping
the few members that it passes before their worker asks for them.
"""

from __future__ import annotations

import logging
import lzma
import posixpath
import tarfile
import threading
import zipfile
import zlib
from collections import deque
from pathlib import Path

from .fetch import FetchError
from .sources import Location, index_names

logger = logging.getLogger(__name__)

_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
# What reading a damaged or unusual archive raises: zipfile refuses encrypted members (RuntimeError) and
# some compression methods (NotImplementedError); zlib and lzma have errors of their own.
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError, zlib.error, lzma.LZMAError)


class ArchiveError(ValueError):
    """A file given as ``--photos-archive`` that is not a readable tar or zip archive."""


def linked_names(members: list[tarfile.TarInfo]) -> list[tuple[str, tarfile.TarInfo]]:
    """Each regular file by its name, and each hard or symbolic link to one by the link's name (tar writes a
    file stored under two names once, then as a link); links leading elsewhere are left out."""
    regular = {posixpath.normpath(info.name): info for info in members if info.isfile()}
    named = [(info.name, info) for info in regular.values()]
    for info in members:
        if info.islnk():
            target = regular.get(posixpath.normpath(info.linkname))
        elif info.issym() and not info.linkname.startswith("/"):
            target = regular.get(posixpath.normpath(posixpath.join(posixpath.dirname(info.name), info.linkname)))
        else:
            continue
        if target is not None:
            named.append((info.name, target))
    return named


class ArchiveSource:
    """Photos named by id inside an archive, at its top or one folder down (as in a folder)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.missing = f"not in archive {self.path.name}"
        self.name = self.host = f"archive {self.path}"
        self._lock = threading.Lock()
        self._buffer: dict[str, bytes] = {}
        self._wanted: deque = deque()  # compressed tar: members still to be read, in archive order
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: archive does not exist")
        with self.path.open("rb") as handle:
            self.compressed = handle.read(6).startswith(_COMPRESSED)
        try:
            if zipfile.is_zipfile(self.path):
                self._zip = zipfile.ZipFile(self.path)
                infos = [info for info in self._zip.infolist() if not info.is_dir()]
                # old Windows tools write "sub\\123.jpg", which zipfile keeps as it is off Windows
                names = [(info.filename.replace("\\", "/"), info) for info in infos]
                self.members = index_names(names, str(self.path))
            else:
                self._tar = tarfile.open(self.path, "r:*")
                members = self._tar.getmembers()
                self._check_listed_whole()
                infos = [info for info in members if info.isfile()]
                self.members = index_names(linked_names(members), str(self.path))
        except ArchiveError:
            raise
        except _READ_ERRORS as error:
            why = " ".join(str(error).split())[:200]  # tarfile's lists the methods it tried, a line each
            raise ArchiveError(f"{self.path}: not a readable .tar, .tar.gz or .zip archive ({why})") from None
        self._order = {id(info): number for number, info in enumerate(infos)}
        logger.info("%s: %d photos", self.path, len(self.members))

    def _check_listed_whole(self) -> None:
        """tarfile ends its listing at a bad header without a word, and every photo past it would read as missing:
        past the last member only zero blocks may follow (read on from where the listing stopped: cheap)."""
        while chunk := self._tar.fileobj.read(1 << 20):
            if chunk.strip(b"\0"):
                last = self._tar.members[-1].name if self._tar.members else None
                raise ArchiveError(f"{self.path}: unreadable after member {last!r} (damaged, or tars joined "
                                   "end to end): the photos past it cannot be listed; repair it or fetch it again")

    def locate(self, photo: int) -> Location | None:
        info = self.members.get(photo)
        if info is None:
            return None
        name = info.filename if self._zip is not None else info.name
        return Location(self.host, f"{self.path}!{name}", order=self._order[id(info)], source=self, key=info)

    def expect(self, locations: list[Location]) -> None:
        """The members that will be read (compressed tar: the forward walk keeps only these)."""
        if self._tar is not None and self.compressed:
            self._wanted = deque(sorted((loc.key for loc in locations if loc.source is self), key=lambda i: i.offset))

    def read(self, location: Location) -> bytes:
        info = location.key
        size = info.file_size if self._zip is not None else info.size
        if size > self.max_bytes:
            raise FetchError("too large", f"{size} bytes, over --max-mb ({self.max_bytes} bytes)")
        try:
            with self._lock:
                if self._zip is not None:
                    return self._zip.read(info)
                if self.compressed:
                    return self._read_forward(info)
                return self._tar.extractfile(info).read()
        except _READ_ERRORS as error:
            raise FetchError("unreadable archive member", f"{location.address}: {error}"[:200]) from None

    def _read_forward(self, info: tarfile.TarInfo) -> bytes:
        if info.name in self._buffer:
            return self._buffer.pop(info.name)
        while self._wanted and self._wanted[0].offset <= info.offset:
            member = self._wanted.popleft()
            data = self._tar.extractfile(member).read()
            if member is info:
                return data
            self._buffer[member.name] = data  # asked for soon by another worker
        return self._tar.extractfile(info).read()  # out of order: slow (decompresses from the start), but right

    def close(self) -> None:
        self._buffer.clear()
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()
