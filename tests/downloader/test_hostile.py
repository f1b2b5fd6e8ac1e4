"""Hostile photos and hostile leftovers: each becomes a recorded failure or is repaired; the run goes on."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import LockHeld, WriterLock
from demo.server import LoopbackServer, Route
from downloader import DownloadConfig, FetchConfig, download, read_jsonl
from downloader.__main__ import main
from tests.conftest import encode, make_image
from tests.downloader.bombs import bomb_png
from tests.downloader.datasets import shop_dataset

ROOT = Path(__file__).resolve().parents[2]
JPEG = encode(make_image(40, 30, seed=3), "JPEG", quality=90)
BIG = encode(Image.fromarray(np.random.default_rng(4).integers(0, 256, (150, 200, 3), dtype=np.uint8)), "PNG")
assert 20_000 < len(BIG) < 1_000_000  # noise does not compress: over a 10 kB cap, under 1 MB


def hostile_routes() -> dict[str, Route]:
    return {
        "/good.jpg": Route(JPEG),
        "/bomb.png": Route(bomb_png(40_000, 40_000), content_type="image/png"),
        "/gzip.jpg": Route(b"this is not gzip at all", headers={"Content-Encoding": "gzip"}),
        "/big.png": Route(BIG, content_type="image/png"),
        "/big-unsized.png": Route(BIG, content_type="image/png", unsized=True),
        "/good2.jpg": Route(JPEG),
    }


NAMES = {1: "good.jpg", 2: "bomb.png", 3: "gzip.jpg", 4: "big.png", 5: "big-unsized.png", 6: "good2.jpg"}


def write_meta(tmp_path: Path, server: LoopbackServer, names: dict[int, str] = NAMES) -> tuple[Path, Path]:
    return shop_dataset(tmp_path, {photo: server.url(name) for photo, name in names.items()})


def config(meta, photos, out, **kw) -> DownloadConfig:
    kw.setdefault("fetch", FetchConfig(timeout=2, retries=1, backoff=0.01, max_bytes=10_000))
    return DownloadConfig(meta=meta, photos=photos, out=out, workers=3, **kw)


@pytest.fixture
def hostile(tmp_path):
    with LoopbackServer(hostile_routes()) as server:
        meta, photos = write_meta(tmp_path, server)
        yield server, meta, photos


def reasons(out: Path) -> dict[int, str]:
    return {r["photo"]: r["reason"] for r in read_jsonl(out / "failures.jsonl")}


def test_bomb_and_broken_gzip_are_failures_and_the_run_goes_on(hostile, tmp_path):
    server, meta, photos = hostile
    out = tmp_path / "out"
    summary = download(config(meta, photos, out))
    assert sorted(p.name for p in (out / "shop").iterdir()) == ["1.jpg", "6.jpg"]
    found = reasons(out)
    assert found[2].startswith("image too large: 1,600,000,000 pixels, over the limit")
    assert found[3].startswith("bad content encoding")
    assert summary.saved == 2 and summary.failed["image too large"] == 1
    assert summary.failed["bad content encoding"] == 1

    hits = dict(server.hits)
    again = download(config(meta, photos, out))
    assert dict(server.hits) == hits and again.skipped_failed == 4  # not fetched again
    download(config(meta, photos, out, retry_failed=True))
    assert server.hits["/bomb.png"] == hits["/bomb.png"] + 1 and server.hits["/gzip.jpg"] == hits["/gzip.jpg"] + 1


GOOD = {1: "good.jpg", 6: "good2.jpg"}
SIZES = {1: "good.jpg", 4: "big.png", 5: "big-unsized.png"}


def test_max_mb_caps_declared_and_unsized_bodies(hostile, tmp_path):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, SIZES)
    out = tmp_path / "out"
    download(config(meta, photos, out))
    found = reasons(out)
    assert found[4] == f"too large: {len(BIG)} bytes declared, over --max-mb (10000 bytes)"
    assert found[5] == "too large: over --max-mb (10000 bytes)"  # no Content-Length: counted while streaming
    assert not (out / "shop" / "4.jpg").exists()


def test_max_mb_flag_reaches_the_fetcher(hostile, tmp_path, capsys):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, SIZES)
    out = tmp_path / "out"
    code = main(["--meta", str(meta), "--photos", str(photos), "--out", str(out), "--quiet", "--max-mb", "0.01",
                 "--retries", "0"])
    assert code == 0
    assert reasons(out)[4].startswith("too large") and (out / "shop" / "1.jpg").exists()
    code = main(["--meta", str(meta), "--photos", str(photos), "--out", str(tmp_path / "out2"), "--quiet",
                 "--max-mb", "1", "--retries", "0"])
    assert code == 0 and (tmp_path / "out2" / "shop" / "4.jpg").exists()  # 1 MB lets it through
    assert "failed by host: 127.0.0.1:" in capsys.readouterr().out


def test_empty_or_cut_images_left_by_a_power_loss_are_fetched_again(hostile, tmp_path):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, GOOD)
    out = tmp_path / "out"
    download(config(meta, photos, out))
    (out / "shop" / "1.jpg").write_bytes(b"")  # what delayed allocation leaves after a power loss
    whole = (out / "shop" / "6.jpg").read_bytes()
    (out / "shop" / "6.jpg").write_bytes(whole[: len(whole) // 2])
    before = dict(server.hits)
    summary = download(config(meta, photos, out))
    assert server.hits["/good.jpg"] == before["/good.jpg"] + 1
    assert server.hits["/good2.jpg"] == before["/good2.jpg"] + 1
    assert summary.saved == 2
    for name in ("1.jpg", "6.jpg"):
        with Image.open(out / "shop" / name) as image:
            image.load()
    assert {r["path"] for r in read_jsonl(out / "manifest.jsonl")} == {"shop/1.jpg", "shop/6.jpg"}


def test_bad_manifest_lines_are_reported_not_a_traceback(hostile, tmp_path):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, {**GOOD, 4: "big.png"})
    out = tmp_path / "out"
    download(config(meta, photos, out))
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(["not json", '{"path": "../x.jpg"}', *lines]) + "\n")
    (out / "failures.jsonl").write_text("[1, 2]\n" + (out / "failures.jsonl").read_text())
    summary = download(config(meta, photos, out))
    text = "\n".join(summary.lines())
    assert "bad lines skipped in the records: 3 (first: " in text and "manifest.jsonl:1: not JSON" in text
    assert [r["path"] for r in read_jsonl(out / "manifest.jsonl")] == ["shop/1.jpg", "shop/6.jpg"]
    assert len(read_jsonl(out / "failures.jsonl")) == 1  # the bad line is dropped by the rewrite


def test_a_second_downloader_on_the_same_out_exits_2_naming_the_holder(hostile, tmp_path):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, GOOD)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "downloader", "--meta", str(meta), "--photos", str(photos), "--out", str(out),
            "--quiet"]
    with WriterLock(out):
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {__import__('os').getpid()}" in lines[0] and "--wait" in lines[0]
        assert not (out / "manifest.jsonl").exists()
        waiting = subprocess.Popen([*args, "--wait"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        time.sleep(1.0)
        assert waiting.poll() is None and not (out / "manifest.jsonl").exists()  # it waits for us
    _, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, stderr
    assert (out / "shop" / "1.jpg").exists()


def test_download_holds_the_writer_lock_while_it_runs(tmp_path):
    started, release = threading.Event(), threading.Event()

    with LoopbackServer({"/slow.jpg": Route(JPEG, delay=1.0)}) as server:
        meta, photos = write_meta(tmp_path, server, {1: "slow.jpg"})
        out = tmp_path / "out"
        thread = threading.Thread(target=lambda: (started.set(), download(config(meta, photos, out)), release.set()))
        thread.start()
        started.wait()
        deadline = time.monotonic() + 10
        while not server.hits and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LockHeld, match="another run is writing it"):
            download(config(meta, photos, out))
        thread.join(timeout=30)
        assert release.is_set() and (out / "shop" / "1.jpg").exists()


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "error: workers must be at least 1, got 0"),
    (["--per-host", "0"], "error: per_host must be at least 1, got 0"),
    (["--give-up-after", "-1"], "error: give_up_after must be >= 0 (0: never), got -1"),
    (["--max-mb", "0"], "error: the body cap (--max-mb) must be at least 1 byte, got 0"),
    (["--photos-dir", "nowhere"], "error: nowhere: photos folder does not exist"),
    (["--mirror", "ftp://x"], "error: --mirror must be an http://, https:// or file:// URL, got 'ftp://x'"),
    (["--mirror", "http://[::1"], "error: --mirror must be an http://, https:// or file:// URL, got 'http://[::1'"),
    (["--workers", "many"], "error: argument --workers: invalid int value: 'many' (see --help)"),
    (["--splits", ","], "error: no splits given; expected some of ['train', 'test']"),
    (["--categories", ""], "error: no categories given; expected some of ['bags', 'belts', 'dresses', 'eyewear', "
                           "'footwear', 'hats', 'leggings', 'outerwear', 'pants', 'skirts', 'tops']"),
    (["--max-mb", "inf"], "error: argument --max-mb: 'inf' is not a finite number (see --help)"),
    (["--timeout", "nan"], "error: argument --timeout: 'nan' is not a finite number (see --help)"),
    (["--max-wait", "1e999"], "error: argument --max-wait: '1e999' is not a finite number (see --help)"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, extra, message):
    (tmp_path / "photos.txt").write_text("")
    result = subprocess.run([sys.executable, "-m", "downloader", "--meta", str(tmp_path), "--photos",
                             str(tmp_path / "photos.txt"), "--out", str(tmp_path / "out"), *extra],
                            capture_output=True, text=True, cwd=tmp_path if "nowhere" in extra else ROOT,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_out_given_as_the_current_folder_is_locked_beside_it(hostile, tmp_path, monkeypatch):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, GOOD)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    summary = download(config(meta, photos, Path(".")))  # regression: "." has no name to put ".lock" after
    assert summary.saved == 2 and (tmp_path / "out" / "shop" / "1.jpg").exists()
    assert not (tmp_path / "out.lock").exists()  # released


def test_a_photo_half_done_gets_its_missing_crop_and_every_manifest_line(hostile, tmp_path):
    server, _, photos = hostile
    meta = tmp_path / "meta2"
    meta.mkdir()
    box = {"left": 1, "top": 1, "width": 10, "height": 10}
    (meta / "train_pairs_hats.json").write_text(json.dumps([{"photo": 1, "product": 5, "bbox": box}] * 2))
    out = tmp_path / "out"
    download(config(meta, photos, out))
    assert sorted(r["path"] for r in read_jsonl(out / "manifest.jsonl")) == ["street/1_5_0.jpg", "street/1_5_1.jpg"]
    # a power loss: the appended manifest lines never reached the disk, and one crop is empty
    (out / "manifest.jsonl").write_text("")
    (out / "street" / "1_5_1.jpg").write_bytes(b"")
    summary = download(config(meta, photos, out))
    assert summary.saved == 1  # only the empty crop was made again
    assert sorted(r["path"] for r in read_jsonl(out / "manifest.jsonl")) == ["street/1_5_0.jpg", "street/1_5_1.jpg"]


def run_over_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """Download the shop photos of a mirror folder holding ``files`` (name: bytes; names are photo ids)."""
    folder, meta = tmp_path / "mirror", tmp_path / "meta"
    folder.mkdir()
    meta.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    ids = sorted(int(name.split(".")[0]) for name in files)
    (meta / "retrieval_hats.json").write_text(json.dumps([{"photo": i, "product": i} for i in ids]))
    download(DownloadConfig(meta=meta, photos_dir=folder, out=tmp_path / "out", workers=2))
    return tmp_path / "out"


def test_a_photo_with_a_comment_too_long_for_a_jpeg_is_saved_without_it(tmp_path):
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * 70_000)  # a JPEG marker holds at most 65,533 bytes
    out = run_over_folder(tmp_path, {"1.png": encode(make_image(30, 20), "PNG", pnginfo=text), "2.jpg": JPEG})
    assert reasons(out) == {}
    with Image.open(out / "shop" / "1.jpg") as saved:
        assert saved.size == (30, 20) and "comment" not in saved.info


def test_failure_lines_of_the_wrong_types_are_reported_not_a_traceback(hostile, tmp_path):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, {**GOOD, 4: "big.png"})
    out = tmp_path / "out"
    download(config(meta, photos, out))
    good = (out / "failures.jsonl").read_text()
    bad = ['{"photo": "x", "reason": "r"}', '{"photo": 3, "path": 7, "reason": "r"}', '{"photo": null}',
           '{"photo": true, "reason": "r"}']
    (out / "failures.jsonl").write_text("\n".join(bad) + "\n" + good)
    summary = download(config(meta, photos, out))  # the final rewrite sorted ints with strings: TypeError
    assert summary.record_problems and len(summary.record_problems) == 4
    assert "failures.jsonl" in summary.record_problems[0]
    assert (out / "failures.jsonl").read_text() == good  # the bad lines are dropped, the good one kept


def test_a_url_that_does_not_parse_is_a_failure_and_the_run_goes_on(hostile, tmp_path):
    server, _, _ = hostile
    meta, photos = write_meta(tmp_path, server, GOOD)
    photos.write_text(photos.read_text() + "000000009,http://[::1/broken.jpg\n")
    (meta / "retrieval_hats.json").write_text(json.dumps([{"photo": i, "product": i} for i in (1, 6, 9)]))
    out = tmp_path / "out"
    summary = download(config(meta, photos, out))  # urlsplit raised ValueError: the run stopped, exit 2
    assert summary.saved == 2 and reasons(out)[9].startswith("bad url")


@pytest.mark.parametrize("settings, message", [
    ({"fetch": FetchConfig(timeout=float("nan"))}, "timeout must be a finite number > 0, got nan"),
    ({"fetch": FetchConfig(timeout=float("inf"))}, "timeout must be a finite number > 0, got inf"),
    ({"max_wait": float("nan")}, "max_wait must be a finite number >= 0, got nan"),
])
def test_settings_that_are_not_finite_numbers_are_refused(tmp_path, settings, message):
    (tmp_path / "photos.txt").write_text("")
    with pytest.raises(ValueError, match=message):
        download(DownloadConfig(meta=tmp_path, photos=tmp_path / "photos.txt", out=tmp_path / "out", **settings))


def test_a_file_given_for_a_folder_and_a_folder_for_a_file_are_named_as_such(tmp_path):
    (tmp_path / "photos.txt").write_text("")
    base = dict(meta=tmp_path, out=tmp_path / "out")
    with pytest.raises(NotADirectoryError, match=r"photos\.txt: the photos folder is a file, not a folder"):
        download(DownloadConfig(photos_dir=tmp_path / "photos.txt", **base))
    with pytest.raises(IsADirectoryError, match=r": the photos file is a folder, not a file"):
        download(DownloadConfig(photos=tmp_path, **base))
    with pytest.raises(IsADirectoryError, match=r": the photos archive is a folder, not a file"):
        download(DownloadConfig(photos_archive=tmp_path, **base))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # the in-process run below
def test_the_cli_does_not_print_pillows_warnings_about_a_photos_exif(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "camera"
    picture = encode(make_image(30, 20), "PNG", exif=exif.tobytes()[:20])  # cut inside its first tag
    out = run_over_folder(tmp_path, {"1.png": picture})  # the photo itself is fine: saved
    assert (out / "shop" / "1.jpg").exists()
    result = subprocess.run([sys.executable, "-m", "downloader", "--meta", str(tmp_path / "meta"), "--photos-dir",
                             str(tmp_path / "mirror"), "--out", str(tmp_path / "out2"), "--quiet"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and (tmp_path / "out2" / "shop" / "1.jpg").exists()
    assert "Warning" not in result.stderr and "EXIF" not in result.stderr  # two lines a photo, 400,000 photos


def test_a_record_line_nested_too_deeply_is_reported_not_a_traceback(tmp_path):
    out = run_over_folder(tmp_path, {"1.jpg": JPEG})
    deep = "[" * 100_000 + "]" * 100_000 + "\n"  # json raises RecursionError, not JSONDecodeError
    for name in ("manifest.jsonl", "failures.jsonl"):
        (out / name).write_text(deep + (out / name).read_text())
    summary = download(DownloadConfig(meta=tmp_path / "meta", photos_dir=tmp_path / "mirror", out=out))
    assert summary.present == 1 and len(summary.record_problems) == 2
    assert [r["path"] for r in read_jsonl(out / "manifest.jsonl")] == ["shop/1.jpg"]
