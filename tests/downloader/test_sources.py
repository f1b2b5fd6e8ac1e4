"""Local mirrors: a folder, an archive, file:// URLs and --mirror give the same crops as the HTTP path."""

import json
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.server import LoopbackServer
from downloader import ArchiveError, DownloadConfig, FetchConfig, download, read_jsonl
from downloader.sources import mirrored, photo_id
from tests.conftest import encode, make_image

BOX = {"left": 3, "top": 4, "width": 20.5, "height": 15}
# photo id -> file name in the mirror: zero-padded or not, JPEG and PNG, some one folder down; 5 is missing
FILES = {1: "000000001.jpg", 2: "2.png", 3: "sub/000000003.png", 4: "sub/4.jpeg", 6: "6.JPG"}
MISSING = 5


def make_mirror(root: Path) -> Path:
    folder = root / "mirror"
    for photo, name in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = make_image(48 + photo, 40, seed=photo)
        path.write_bytes(encode(picture, "PNG" if name.endswith(".png") else "JPEG", **(
            {} if name.endswith(".png") else {"quality": 90})))
    (folder / "notes.txt").write_text("not a photo")
    (folder / "sub" / "7.txt").write_text("not a photo either")
    return folder


def write_meta(root: Path) -> Path:
    meta = root / "meta"
    meta.mkdir()
    photos = [*FILES, MISSING]
    (meta / "train_pairs_bags.json").write_text(json.dumps([{"photo": p, "product": 10 + p, "bbox": BOX}
                                                            for p in photos if p % 2]))
    (meta / "retrieval_bags.json").write_text(json.dumps([{"photo": p, "product": 10 + p} for p in photos]))
    return meta


def photos_txt(root: Path, url) -> Path:
    path = root / "photos.txt"
    path.write_text("".join(f"{p:09d},{url(FILES.get(p, f'{p}.jpg'))}\n" for p in [*FILES, MISSING]))
    return path


def run(root: Path, name: str, **kw) -> Path:
    out = root / name
    kw.setdefault("fetch", FetchConfig(timeout=2, retries=0))
    summary = download(DownloadConfig(meta=root / "meta", out=out, workers=3, **kw))
    assert summary.saved == 7, summary.lines()
    return out


def pixels(out: Path) -> dict[str, np.ndarray]:
    return {r["path"]: np.asarray(Image.open(out / r["path"])) for r in read_jsonl(out / "manifest.jsonl")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The HTTP path: the mirror folder served over loopback HTTP."""
    root = tmp_path_factory.mktemp("http")
    folder = make_mirror(root)
    write_meta(root)
    with LoopbackServer(root=folder) as server:
        out = run(root, "out", photos=photos_txt(root, server.url))
    assert {r["photo"]: r["reason"] for r in read_jsonl(out / "failures.jsonl")} == {MISSING: "http 404: Not Found"}
    return read_jsonl(out / "manifest.jsonl"), pixels(out)


def check_same(out: Path, reference) -> None:
    manifest, images = reference
    assert read_jsonl(out / "manifest.jsonl") == manifest
    found = pixels(out)
    assert found.keys() == images.keys() and len(found) == 7
    for path, expected in images.items():
        assert np.array_equal(found[path], expected), path


def test_folder_gives_the_crops_of_the_http_path(tmp_path, reference):
    folder = make_mirror(tmp_path)
    write_meta(tmp_path)
    out = run(tmp_path, "out", photos_dir=folder)  # no photos.txt needed
    check_same(out, reference)
    failures = read_jsonl(out / "failures.jsonl")
    assert [(f["photo"], f["reason"], f["host"]) for f in failures] == [
        (MISSING, f"not in folder {folder}", f"folder {folder}")]


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
def test_archive_gives_the_crops_of_the_http_path(tmp_path, reference, kind):
    folder = make_mirror(tmp_path)
    archive = tmp_path / f"photos.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as handle:
            for path in sorted(folder.rglob("*")):
                handle.write(path, f"photos/{path.relative_to(folder)}" if "sub" not in path.parts else
                             str(path.relative_to(folder)))
    else:
        with tarfile.open(archive, "w:gz" if kind == "tar.gz" else "w") as handle:
            handle.add(folder, arcname=".")
    write_meta(tmp_path)
    out = run(tmp_path, "out", photos_archive=archive)
    check_same(out, reference)
    assert [f["reason"] for f in read_jsonl(out / "failures.jsonl")] == ["not in archive " + archive.name]
    assert sorted(p.name for p in out.iterdir()) == ["failures.jsonl", "manifest.jsonl", "metadata_problems.jsonl",
                                                     "shop", "street"]  # nothing unpacked


def test_file_urls_work_like_http_ones(tmp_path, reference):
    folder = make_mirror(tmp_path)
    write_meta(tmp_path)
    out = run(tmp_path, "out", photos=photos_txt(tmp_path, lambda name: (folder / name).as_uri()))
    check_same(out, reference)
    [failure] = read_jsonl(out / "failures.jsonl")
    assert failure["reason"].startswith("missing file") and failure["host"] == "file://"


def test_mirror_replaces_scheme_and_host(tmp_path, reference):
    folder = make_mirror(tmp_path / "site" / "images")
    write_meta(tmp_path)
    photos = photos_txt(tmp_path, lambda name: f"https://dead.example.com/images/mirror/{name}")
    with LoopbackServer(root=tmp_path / "site") as server:
        out = run(tmp_path, "out", photos=photos, mirror=server.base_url)
    check_same(out, reference)
    assert folder.exists() and server.hits["/images/mirror/000000001.jpg"] == 1


def test_a_folder_with_photos_txt_falls_back_to_the_url(tmp_path, reference):
    folder = make_mirror(tmp_path)
    write_meta(tmp_path)
    (folder / "sub" / "4.jpeg").rename(tmp_path / "4.jpeg")
    with LoopbackServer(root=tmp_path) as server:
        photos = photos_txt(tmp_path, lambda name: server.url(Path(name).name))
        out = run(tmp_path, "out", photos_dir=folder, photos=photos)
    check_same(out, reference)
    assert server.hits["/4.jpeg"] == 1 and sum(server.hits.values()) == 2  # 4 from HTTP; 5 missing everywhere
    [failure] = read_jsonl(out / "failures.jsonl")
    assert failure["photo"] == MISSING and failure["reason"] == "http 404: Not Found"


def test_rerun_from_a_folder_resumes_and_retries_only_with_retry_failed(tmp_path):
    folder = make_mirror(tmp_path)
    write_meta(tmp_path)
    run(tmp_path, "out", photos_dir=folder)
    again = download(DownloadConfig(meta=tmp_path / "meta", out=tmp_path / "out", photos_dir=folder))
    assert again.saved == 0 and again.present == 5 and again.skipped_failed == 1
    (folder / "5.jpg").write_bytes(encode(make_image(30, 30), "JPEG"))
    fixed = download(DownloadConfig(meta=tmp_path / "meta", out=tmp_path / "out", photos_dir=folder,
                                    retry_failed=True))
    assert fixed.saved == 2 and read_jsonl(tmp_path / "out" / "failures.jsonl") == []


def test_not_an_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "photos.tar"
    bad.write_text("hello")
    write_meta(tmp_path)
    with pytest.raises(ArchiveError, match=r"photos\.tar: not a readable \.tar, \.tar\.gz or \.zip archive") as error:
        download(DownloadConfig(meta=tmp_path / "meta", out=tmp_path / "out", photos_archive=bad))
    assert "\n" not in str(error.value)  # tarfile lists each method it tried, a line each: the CLI prints one


@pytest.mark.parametrize("name, photo", [("000000123.jpg", 123), ("123.PNG", 123), ("a/7.webp", 7),
                                         ("123.txt", None), ("x123.jpg", None), ("12 3.jpg", None),
                                         ("\u00b2.jpg", None)])  # "²".isdigit() is true, int() refuses it
def test_photo_id_from_a_file_name(name, photo):
    assert photo_id(name) == photo


def test_mirrored_keeps_path_and_query():
    assert mirrored("http://old.com:8080/a/b.jpg?x=1", "https://new.org/base/") == "https://new.org/base/a/b.jpg?x=1"


def test_cli_reads_an_archive(tmp_path, capsys):
    from downloader.__main__ import main

    folder = make_mirror(tmp_path)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in folder.rglob("*"):
            handle.write(path, str(path.relative_to(folder)))
    write_meta(tmp_path)
    code = main(["--meta", str(tmp_path / "meta"), "--photos-archive", str(archive), "--out", str(tmp_path / "out"),
                 "--quiet"])
    assert code == 0 and len(read_jsonl(tmp_path / "out" / "manifest.jsonl")) == 7
    assert f"failed by host: archive {archive}: 1" in capsys.readouterr().out


def test_a_local_file_that_is_not_a_regular_file_is_refused_unread(tmp_path):
    from downloader.fetch import FetchError
    from downloader.sources import read_capped

    fifo = tmp_path / "7.jpg"
    os.mkfifo(fifo)  # size 0 by stat, endless by read: /dev/zero as well
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"\0" * 100_000), daemon=True)
    writer.start()
    with pytest.raises(FetchError, match=r"^not a regular file: .*7\.jpg$"):
        read_capped(fifo, max_bytes=1000)
    if writer.is_alive():
        fifo.read_bytes()  # let the writer go
    writer.join(timeout=5)
    with pytest.raises(FetchError, match="not a regular file"):
        read_capped(Path("/dev/zero"), max_bytes=1000)


def zip_marked(path: Path, files: dict[str, bytes], marks: dict[str, tuple[int, int]]) -> None:
    """A zip of ``files`` whose central directory gives ``marks[name] = (flags, method)``: flag 1 is
    "encrypted" and method 9 Deflate64, both of which zipfile cannot read."""
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in files.items():
            handle.writestr(name, data)
    raw = bytearray(path.read_bytes())
    for name, (flags, method) in marks.items():
        entry = raw.rindex(b"PK\x01\x02", 0, raw.rindex(name.encode()))  # the name's central directory entry
        raw[entry + 8:entry + 12] = flags.to_bytes(2, "little") + method.to_bytes(2, "little")
    path.write_bytes(bytes(raw))


def test_archive_members_zipfile_cannot_read_are_failures_and_the_run_goes_on(tmp_path):
    photo = encode(make_image(30, 20), "JPEG")
    archive = tmp_path / "photos.zip"
    zip_marked(archive, {"1.jpg": photo, "2.jpg": photo, "3.jpg": photo}, {"1.jpg": (1, 0), "2.jpg": (0, 9)})
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "retrieval_bags.json").write_text(json.dumps([{"photo": p, "product": p} for p in (1, 2, 3)]))
    summary = download(DownloadConfig(meta=meta, out=tmp_path / "out", photos_archive=archive))
    found = {r["photo"]: r["reason"] for r in read_jsonl(tmp_path / "out" / "failures.jsonl")}
    assert summary.saved == 1 and sorted(found) == [1, 2]
    assert "encrypted" in found[1] and "compression method is not supported" in found[2]
    assert all(reason.startswith(f"unreadable archive member: {archive}!") for reason in found.values())


@pytest.mark.parametrize("compress", [False, True])
def test_a_tar_damaged_in_the_middle_is_refused_not_listed_in_part(tmp_path, compress):
    import gzip
    import io

    photo = encode(make_image(30, 20), "JPEG")
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as handle:
        for name in ("1.jpg", "2.jpg", "3.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(photo)
            handle.addfile(info, io.BytesIO(photo))
    raw = bytearray(stream.getvalue())
    second = raw.index(b"2.jpg\0")
    raw[second:second + 100] = b"\x01" * 100  # a bad header: tarfile's listing ends there without a word
    archive = tmp_path / ("photos.tar.gz" if compress else "photos.tar")
    archive.write_bytes(gzip.compress(bytes(raw)) if compress else bytes(raw))
    write_meta(tmp_path)
    with pytest.raises(ArchiveError, match=r"^\S*photos\.tar(\.gz)?: unreadable after member '1\.jpg' \(damaged"):
        download(DownloadConfig(meta=tmp_path / "meta", out=tmp_path / "out", photos_archive=archive))


def test_a_zip_made_on_windows_with_backslashes_in_its_names_is_read(tmp_path):
    folder = make_mirror(tmp_path)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in folder.rglob("*"):
            if path.is_file():  # old Windows tools write "sub\000000003.png"; zipfile keeps it as is off Windows
                name = str(path.relative_to(folder))
                handle.write(path, name.replace("/", "\\") if "/" in name else "photos\\" + name)
    write_meta(tmp_path)
    run(tmp_path, "out", photos_archive=archive)


@pytest.mark.parametrize("compress", ["", "gz"])
def test_photos_stored_as_tar_links_are_read_through_them(tmp_path, reference, compress):
    """tar stores a file with two names once, then as a hard link; a photo may also be a symbolic link."""
    folder = make_mirror(tmp_path)
    (folder / "a").mkdir()
    (folder / "sub" / "4.jpeg").rename(folder / "a" / "raw.bin")
    os.link(folder / "a" / "raw.bin", folder / "sub" / "4.jpeg")  # archived after a/raw.bin: a hard link
    (folder / "6.JPG").rename(folder / "a" / "six.bin")
    (folder / "6.JPG").symlink_to("a/six.bin")
    (folder / "sub" / "9.jpg").symlink_to("/etc/hostname")  # leads out of the archive: not a photo
    archive = tmp_path / f"photos.tar{'.' + compress if compress else ''}"
    with tarfile.open(archive, f"w:{compress}") as handle:
        handle.add(folder, arcname=".")
    with tarfile.open(archive) as handle:
        kinds = {Path(m.name).name: m.type for m in handle.getmembers()}
    assert (kinds["4.jpeg"], kinds["6.JPG"]) == (tarfile.LNKTYPE, tarfile.SYMTYPE)
    write_meta(tmp_path)
    out = run(tmp_path, "out", photos_archive=archive)
    check_same(out, reference)
