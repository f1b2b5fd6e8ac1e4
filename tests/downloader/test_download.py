import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.server import LoopbackServer, Route
from downloader import DownloadConfig, FetchConfig, download, read_jsonl
from tests.conftest import encode, make_image
from tests.downloader.datasets import shop_dataset

ROOT = Path(__file__).resolve().parents[2]

STREET = make_image(80, 60, seed=1)
SHOP = make_image(50, 70, seed=2)
BOX = {"left": 10, "top": 5, "width": 30.5, "height": 40}
EDGE_BOX = {"left": 60, "top": 40, "width": 100, "height": 100}  # runs past the right and bottom edges
OUTSIDE_BOX = {"left": 500, "top": 500, "width": 10, "height": 10}


def routes() -> dict[str, Route]:
    jpeg = encode(SHOP, "JPEG", quality=95)
    return {
        "/street.png": Route(encode(STREET, "PNG"), content_type="image/png"),
        "/shop.jpg": Route(jpeg),
        "/missing.jpg": Route(b"no", status=404, content_type="text/plain"),
        "/gone.jpg": Route(b"no", status=410, content_type="text/plain"),
        "/flaky.jpg": Route(jpeg, fail_times=1),
        "/slow.jpg": Route(jpeg, delay=1.5),
        "/page.jpg": Route(b"<!DOCTYPE html><html>moved</html>", content_type="text/html"),
        "/truncated.jpg": Route(jpeg[: len(jpeg) // 2]),
        "/empty.jpg": Route(b""),
        "/moved.jpg": Route(redirect="/shop.jpg"),
        "/cmyk.jpg": Route(encode(SHOP.convert("CMYK"), "JPEG")),
        "/palette.gif": Route(encode(SHOP.convert("P"), "GIF"), content_type="image/gif"),
    }


def write_dataset(tmp_path: Path, server: LoopbackServer) -> tuple[Path, Path]:
    names = {1: "street.png", 2: "street.png", 10: "shop.jpg", 11: "missing.jpg", 12: "gone.jpg",
             13: "flaky.jpg", 14: "slow.jpg", 15: "page.jpg", 16: "truncated.jpg", 17: "empty.jpg",
             18: "moved.jpg", 19: "cmyk.jpg", 20: "palette.gif"}
    photos = tmp_path / "photos.txt"
    photos.write_text("".join(f"{i:09d},{server.url(name)}\n" for i, name in names.items()))
    meta = tmp_path / "meta" / "json"
    meta.mkdir(parents=True)
    (meta / "train_pairs_dresses.json").write_text(json.dumps([
        {"photo": 1, "product": 7, "bbox": BOX},
        {"photo": 1, "product": 7, "bbox": EDGE_BOX},
        {"photo": 1, "product": 8, "bbox": OUTSIDE_BOX},
        {"photo": 99, "product": 8, "bbox": BOX},  # not in photos.txt: a metadata problem
    ]))
    (meta / "test_pairs_skirts.json").write_text(json.dumps([{"photo": 2, "product": 30, "bbox": BOX}]))
    (meta / "retrieval_dresses.json").write_text(json.dumps(
        [{"photo": i, "product": 7} for i in range(10, 21)]))
    return meta, photos


@pytest.fixture
def served(tmp_path):
    with LoopbackServer(routes()) as server:
        meta, photos = write_dataset(tmp_path, server)
        yield server, meta, photos


def config(meta, photos, out, **kw) -> DownloadConfig:
    kw.setdefault("fetch", FetchConfig(timeout=0.5, retries=1, backoff=0.01))
    return DownloadConfig(meta=meta, photos=photos, out=out, workers=4, **kw)


def test_download_saves_crops_shop_photos_and_records_failures(served, tmp_path):
    server, meta, photos = served
    out = tmp_path / "out"
    summary = download(config(meta, photos, out))

    crop = np.asarray(Image.open(out / "street/1_7_0.jpg"), dtype=float)
    expected = np.asarray(STREET, dtype=float)[5:45, 10:41]  # left 10, width 30.5 -> columns 10..40
    assert crop.shape == expected.shape
    assert np.abs(crop - expected).mean() < 3  # JPEG at quality 95
    edge = Image.open(out / "street/1_7_1.jpg")
    assert edge.size == (20, 20)  # clipped to the 80x60 image
    assert not (out / "street/1_8_0.jpg").exists()
    assert Image.open(out / "street/2_30_0.jpg").size == (31, 40)
    for photo in (10, 13, 18, 19, 20):
        saved = Image.open(out / f"shop/{photo}.jpg")
        assert saved.size == SHOP.size and saved.mode == "RGB"

    manifest = {r["path"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert set(manifest) == {"street/1_7_0.jpg", "street/1_7_1.jpg", "street/2_30_0.jpg",
                             "shop/10.jpg", "shop/13.jpg", "shop/18.jpg", "shop/19.jpg", "shop/20.jpg"}
    assert manifest["street/1_7_0.jpg"] == {"path": "street/1_7_0.jpg", "kind": "street", "photo": 1,
                                            "product": 7, "category": "dresses", "split": "train", "bbox": BOX}
    assert manifest["street/2_30_0.jpg"]["split"] == "test"
    assert manifest["shop/10.jpg"] == {"path": "shop/10.jpg", "kind": "shop", "photo": 10, "product": 7,
                                       "category": "dresses", "split": "train", "bbox": None}

    reasons = {(r["photo"], r["reason"].split(":")[0]) for r in read_jsonl(out / "failures.jsonl")}
    assert reasons == {(1, "bad box"), (11, "http 404"), (12, "http 410"), (14, "timeout"),
                       (15, "not an image"), (16, "truncated or corrupt image"), (17, "empty body")}
    assert server.hits["/missing.jpg"] == 1 and server.hits["/gone.jpg"] == 1  # 4xx never retried
    assert server.hits["/flaky.jpg"] == 2  # a 500, then success on retry
    assert server.hits["/slow.jpg"] == 2  # timed out twice
    assert server.hits["/street.png"] == 2  # photos 1 and 2: each fetched once for all its boxes
    assert summary.saved == 8 and sum(summary.failed.values()) == 7 and summary.metadata_problems == 1
    problems = read_jsonl(out / "metadata_problems.jsonl")
    assert problems[0]["photo"] == 99 and "not in photos.txt" in problems[0]["problem"]


def test_rerun_fetches_nothing_again_and_never_duplicates(served, tmp_path):
    server, meta, photos = served
    out = tmp_path / "out"
    download(config(meta, photos, out))
    manifest = (out / "manifest.jsonl").read_text()
    failures = (out / "failures.jsonl").read_text()
    hits = dict(server.hits)

    summary = download(config(meta, photos, out))
    assert dict(server.hits) == hits
    assert summary.saved == 0 and summary.present == 6 and summary.skipped_failed == 7
    assert (out / "manifest.jsonl").read_text() == manifest
    assert (out / "failures.jsonl").read_text() == failures

    server.routes["/missing.jpg"] = routes()["/shop.jpg"]  # the host came back
    summary = download(config(meta, photos, out, retry_failed=True))
    assert server.hits["/missing.jpg"] == 2 and server.hits["/shop.jpg"] == hits["/shop.jpg"]
    assert (out / "shop/11.jpg").exists()
    assert 11 not in {r["photo"] for r in read_jsonl(out / "failures.jsonl")}
    paths = [r["path"] for r in read_jsonl(out / "manifest.jsonl")]
    assert len(paths) == len(set(paths)) == 9


def test_killed_run_is_repaired_on_rerun(served, tmp_path):
    server, meta, photos = served
    out = tmp_path / "out"
    download(config(meta, photos, out))
    # What a kill -9 can leave: a torn last line and an image whose manifest line was never written.
    lines = (out / "manifest.jsonl").read_text().splitlines()
    kept = [line for line in lines if "shop/10.jpg" not in line]
    (out / "manifest.jsonl").write_text("\n".join(kept) + '\n{"path": "shop/1')
    (out / "shop/13.jpg").unlink()
    download(config(meta, photos, out))
    paths = sorted(r["path"] for r in read_jsonl(out / "manifest.jsonl"))
    assert paths == sorted({json.loads(line)["path"] for line in lines})
    assert (out / "shop/13.jpg").exists()


def test_filters_categories_and_splits(served, tmp_path):
    _, meta, photos = served
    out = tmp_path / "out"
    download(config(meta, photos, out, categories=("skirts",), splits=("test",)))
    assert [r["path"] for r in read_jsonl(out / "manifest.jsonl")] == ["street/2_30_0.jpg"]


def test_bad_arguments_are_value_errors(served, tmp_path):
    _, meta, photos = served
    with pytest.raises(ValueError, match="unknown categories"):
        download(config(meta, photos, tmp_path, categories=("socks",)))
    with pytest.raises(FileNotFoundError, match="photos file does not exist"):
        download(config(meta, tmp_path / "nope.txt", tmp_path))


def test_cli_missing_photos_file_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "downloader", "--meta", str(tmp_path), "--photos",
                             str(tmp_path / "photos.txt"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'photos.txt'}: photos file does not exist"


def ctrl_c_dataset(tmp_path: Path, server: LoopbackServer, count: int) -> list[str]:
    meta, photos = shop_dataset(tmp_path, {i: server.url(f"{i}.jpg") for i in range(count)})
    return [sys.executable, "-m", "downloader", "--meta", str(meta), "--photos", str(photos),
            "--out", str(tmp_path / "out"), "--workers", "2", "--quiet"]


def interrupt_while_in_flight(process: subprocess.Popen, server: LoopbackServer, out: Path, presses: int) -> str:
    """Once 5 images are saved, press Ctrl-C while both workers wait on a reply; return stdout."""
    deadline = time.monotonic() + 30
    while (len(list((out / "shop").glob("*.jpg"))) < 5 or server.active < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.active == 2, "never saw two requests in flight"
    for _ in range(presses):
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 130 and "interrupted" in stdout
    return stdout


def test_ctrl_c_finishes_the_photos_in_flight_and_rerun_completes(tmp_path):
    picture = encode(make_image(30, 30), "JPEG")
    count = 40
    out = tmp_path / "out"
    with LoopbackServer({f"/{i}.jpg": Route(picture) for i in range(count)}, latency=0.3) as server:
        args = ctrl_c_dataset(tmp_path, server, count)
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        interrupt_while_in_flight(process, server, out, presses=1)
        first = read_jsonl(out / "manifest.jsonl")
        on_disk = {f"shop/{p.name}" for p in (out / "shop").glob("*.jpg")}
        assert 5 <= len(first) < count and {r["path"] for r in first} == on_disk
        requested = {f"shop{path.removesuffix('.jpg')}.jpg" for path in server.hits}
        assert on_disk == requested  # every photo asked for, the two in flight included, was finished
        assert not list((out / "shop").glob(".*"))  # no half-written image

        hits_before = sum(server.hits.values())
        rerun = subprocess.run([*args, "--workers", "8"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        assert sum(server.hits.values()) - hits_before == count - len(first)
        assert len(read_jsonl(out / "manifest.jsonl")) == count


def test_a_second_ctrl_c_abandons_the_photos_in_flight(tmp_path):
    picture = encode(make_image(30, 30), "JPEG")
    out = tmp_path / "out"
    with LoopbackServer({f"/{i}.jpg": Route(picture) for i in range(40)}, latency=0.5) as server:
        args = ctrl_c_dataset(tmp_path, server, 40)
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        interrupt_while_in_flight(process, server, out, presses=2)
        saved = {r["path"] for r in read_jsonl(out / "manifest.jsonl")}
        requested = {f"shop{path.removesuffix('.jpg')}.jpg" for path in server.hits}
        assert 1 <= len(requested - saved) <= 2 and saved == {f"shop/{p.name}" for p in (out / "shop").glob("*.jpg")}
