"""Where a photo's bytes come from: its URL (http, https, file), a local folder, or an archive.

Every source answers two questions: where is photo N (``locate``: a ``Location`` naming the host
that failures are grouped by and that per-host limits apply to, or None when it has no copy), and
what are its bytes (``read``: raises ``FetchError`` with a groupable reason). Everything after the
bytes (validation, crops, records) is the same for every source.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

from .fetch import FetchError, Fetcher

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Location:
    """Where one photo is: ``host`` groups failures and, when ``limited``, caps concurrent requests;
    ``address`` (a URL or a file) is what ``failures.jsonl`` records; ``order`` is the best reading order."""

    host: str
    address: str
    limited: bool = False
    order: int = 0
    source: "Source | None" = field(default=None, compare=False, repr=False)
    key: object = field(default=None, compare=False, repr=False)

    def read(self) -> bytes:
        return self.source.read(self)


class Source(Protocol):
    name: str  # the host that a photo this source has no copy of is counted under
    missing: str  # the failure reason for a photo this source has no copy of

    def locate(self, photo: int) -> Location | None: ...
    def read(self, location: Location) -> bytes: ...
    def expect(self, locations: list[Location]) -> None: ...
    def close(self) -> None: ...


def read_capped(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, with the same size cap as a download (never more than the cap is read: a
    ``file://`` URL may name a FIFO or ``/dev/zero``, whose size says 0)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise FetchError("not a regular file", str(path))
        if info.st_size > max_bytes:
            raise FetchError("too large", f"{info.st_size} bytes, over --max-mb ({max_bytes} bytes)")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise FetchError("too large", f"over --max-mb ({max_bytes} bytes)")
        return data
    except FileNotFoundError:
        raise FetchError("missing file", str(path)) from None
    except OSError as error:
        raise FetchError("unreadable file", f"{path}: {error.strerror or error}") from None


def mirrored(url: str, mirror: str) -> str:
    """``url`` with the scheme and host of ``mirror`` (and its path as a prefix), keeping path and query."""
    base = urlsplit(mirror)
    try:
        original = urlsplit(url)
    except ValueError:
        return url  # no path to keep: left as it is, to fail as a bad URL
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + original.path, original.query, ""))


class UrlSource:
    """The URLs of ``photos.txt``: ``http(s)://`` through the fetcher, ``file://`` read from disk."""

    name = "photos.txt"
    missing = "not in photos.txt"

    def __init__(self, urls: dict[int, str], fetcher: Fetcher, mirror: str | None = None) -> None:
        self.urls = {photo: mirrored(url, mirror) for photo, url in urls.items()} if mirror else dict(urls)
        self.fetcher = fetcher

    def locate(self, photo: int) -> Location | None:
        url = self.urls.get(photo)
        if url is None:
            return None
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. "http://[::1/x.jpg": the fetch fails with "bad url"
            return Location(url, url, limited=True, source=self)
        if parts.scheme == "file":
            return Location("file://", url, source=self, key=Path(url2pathname(unquote(parts.path))))
        host = parts.netloc.rpartition("@")[2]  # without "user:password@": hosts are printed in the summary
        return Location(host or url, url, limited=True, source=self)

    def read(self, location: Location) -> bytes:
        if isinstance(location.key, Path):
            return read_capped(location.key, self.fetcher.config.max_bytes)
        return self.fetcher.get(location.address)

    def expect(self, locations: list[Location]) -> None:
        pass

    def close(self) -> None:
        self.fetcher.close()


def photo_id(name: str) -> int | None:
    """The photo id a mirror's file name stands for: ``000000123.jpg`` and ``123.png`` are 123."""
    stem, extension = os.path.splitext(os.path.basename(name))
    if extension.lower() not in IMAGE_EXTENSIONS or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def index_names(names: list[tuple[str, object]], where: str) -> dict[int, object]:
    """Map photo ids to the first of ``(relative name, key)`` found at depth 0 or 1; duplicates are logged."""
    found: dict[int, tuple[str, object]] = {}
    duplicates = 0
    names = [(posixpath.normpath(name).lstrip("/"), key) for name, key in names]
    for name, key in sorted(names, key=lambda item: (item[0].count("/"), item[0])):
        photo = photo_id(name)
        if photo is None or name.startswith("../") or name.count("/") > 1:
            continue
        if photo in found:
            duplicates += 1
            continue
        found[photo] = (name, key)
    if duplicates:
        logger.warning("%s: %d photos have more than one file; the first by depth and name is used", where, duplicates)
    return {photo: key for photo, (_, key) in found.items()}


class FolderSource:
    """A folder of files named by photo id (zero-padded or not, any image extension), in it or one sub-folder down."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.name = f"folder {self.folder}"
        self.missing = f"not in folder {self.folder}"
        names = []
        for entry in os.scandir(self.folder):
            if entry.is_file():
                names.append((entry.name, Path(entry.path)))
            elif entry.is_dir():
                names += [(f"{entry.name}/{inner.name}", Path(inner.path))
                          for inner in os.scandir(entry.path) if inner.is_file()]
        self.files = index_names(names, str(self.folder))
        logger.info("%s: %d photos", self.folder, len(self.files))

    def locate(self, photo: int) -> Location | None:
        path = self.files.get(photo)
        return None if path is None else Location(self.name, str(path), source=self, key=path)

    def read(self, location: Location) -> bytes:
        return read_capped(location.key, self.max_bytes)

    def expect(self, locations: list[Location]) -> None:
        pass

    def close(self) -> None:
        pass


class ChainSource:
    """The first source holding a copy of the photo (a local mirror, then the URLs)."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.name = sources[0].name
        self.missing = " and ".join(source.missing for source in sources)

    def locate(self, photo: int) -> Location | None:
        for source in self.sources:
            location = source.locate(photo)
            if location is not None:
                return location
        return None

    def read(self, location: Location) -> bytes:
        return location.read()

    def expect(self, locations: list[Location]) -> None:
        for source in self.sources:
            source.expect(locations)

    def close(self) -> None:
        for source in self.sources:
            source.close()
