import os
import signal

import numpy as np
import pytest
from PIL import Image

from downloader import images
from embeddings.extraction.decoding import DecodePool
from embeddings.extraction.precision import choose_precision, cpu_flags
from embeddings.extraction.preprocess import load_pixels
from tests.conftest import encode, make_image

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx avx2 fma {extra}
bugs\t\t: spectre_v1
"""


def photo(path, width, height, seed=0):
    path.write_bytes(encode(make_image(width, height, seed=seed), "JPEG", quality=90))
    return path


def test_fast_decoding_scales_large_jpegs_in_libjpeg_only(tmp_path):
    big = photo(tmp_path / "big.jpg", 520, 480).read_bytes()
    assert images.decode(big, draft=(224, 224)).size == (260, 240)  # 1/2 scale keeps both sides >= 224
    assert images.decode(big, draft=(100, 100)).size == (130, 120)  # 1/4
    assert images.decode(big).size == (520, 480)
    small = photo(tmp_path / "small.jpg", 400, 300).read_bytes()
    assert images.decode(small, draft=(224, 224)).size == (400, 300)  # under twice the input: untouched
    png = encode(make_image(520, 480), "PNG")
    assert images.decode(png, draft=(224, 224)).size == (520, 480)


def test_fast_pixels_are_close_to_exact_and_equal_below_twice_the_input(tmp_path):
    big = photo(tmp_path / "big.jpg", 520, 480)
    exact = load_pixels(big, (224, 224), "exact").astype(np.int16)
    fast = load_pixels(big, (224, 224), "fast").astype(np.int16)
    assert exact.dtype == np.int16 and fast.shape == exact.shape == (224, 224, 3)
    assert 0 < np.abs(exact - fast).mean() < 3.0
    small = photo(tmp_path / "small.jpg", 300, 250)
    np.testing.assert_array_equal(load_pixels(small, (224, 224), "fast"), load_pixels(small, (224, 224), "exact"))


def test_fast_decoding_keeps_exif_rotation(tmp_path):
    upright = make_image(480, 640)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes()))
    plain = photo(tmp_path / "plain.jpg", 480, 640)
    plain.write_bytes(encode(upright, "JPEG", quality=95))
    difference = load_pixels(rotated, (224, 224), "fast").astype(float) - load_pixels(plain, (224, 224), "fast")
    assert np.abs(difference).mean() < 3.0


def test_pool_returns_batches_in_order_with_failures(tmp_path):
    good = [photo(tmp_path / f"{i}.jpg", 40, 30, seed=i) for i in range(5)]
    (tmp_path / "bad.jpg").write_bytes(b"<html>nope</html>")
    items = [(f"g{i}", p) for i, p in enumerate(good)] + [("bad", tmp_path / "bad.jpg"), ("gone", tmp_path / "x.jpg")]
    with DecodePool((32, 32), "exact", workers=2, batch_size=3) as pool:
        batches = list(pool.batches(items))
    assert [b.ids for b in batches] == [["g0", "g1", "g2"], ["g3", "g4"], []]
    assert dict(f for b in batches for f in b.failures).keys() == {"bad", "gone"}
    np.testing.assert_array_equal(batches[1].pixels[0], load_pixels(good[3], (32, 32)))
    assert batches[0].pixels.dtype == np.uint8 and batches[0].pixels.shape == (3, 32, 32, 3)


def test_a_killed_decoding_process_is_replaced_and_nothing_is_lost(tmp_path, caplog):
    paths = [photo(tmp_path / f"{i}.jpg", 40, 30, seed=i) for i in range(24)]
    items = [(f"{i}", p) for i, p in enumerate(paths)]
    seen = []
    with DecodePool((32, 32), "exact", workers=2, batch_size=2, prefetch=1) as pool:
        for number, batch in enumerate(pool.batches(items)):
            assert not batch.failures
            seen += batch.ids
            if number == 0:
                victim = next(iter(pool._pool._processes))
                os.kill(victim, signal.SIGKILL)
    assert seen == [f"{i}" for i in range(24)]
    assert "restarting the decoding processes" in caplog.text


def test_auto_precision_reads_the_hardware():
    assert cpu_flags(CPUINFO.format(extra="amx_bf16 amx_tile")) >= {"amx_bf16", "avx2"}
    assert choose_precision("auto", CPUINFO.format(extra="amx_bf16 amx_tile"), gpus=[]) == "bfloat16"
    assert choose_precision("auto", CPUINFO.format(extra="avx512f avx512_bf16"), gpus=[]) == "bfloat16"
    assert choose_precision("auto", CPUINFO.format(extra="avx512f"), gpus=[]) == "float32"  # this machine's kind
    assert choose_precision("auto", CPUINFO.format(extra=""), gpus=[(9, 0)]) == "bfloat16"  # H100
    assert choose_precision("auto", CPUINFO.format(extra="amx_bf16"), gpus=[(7, 5)]) == "float32"  # T4: the GPU runs it
    assert choose_precision("float16", "", gpus=[]) == "float16"
    with pytest.raises(ValueError, match=r"precision must be one of .* got 'fp8'"):
        choose_precision("fp8")


DRIVER = """
import sys, time
from multiprocessing import forkserver
from embeddings.extraction.decoding import DecodePool

if __name__ == "__main__":
    pool = DecodePool((32, 32), "exact", workers=2, batch_size=2)
    batches = pool.batches([(str(i), sys.argv[1]) for i in range(40)])
    next(batches)
    print(*pool._pool._processes, forkserver._forkserver._forkserver_pid, flush=True)
    time.sleep(60)
"""


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_killed_driver_leaves_no_decoding_process_behind(tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(photo(tmp_path / "a.jpg", 40, 30))],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        pids = [int(pid) for pid in driver.stdout.readline().split()]
        assert len(pids) == 3
        driver.kill()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if not _gone(pid)] == []
    finally:
        driver.kill()
        driver.wait()
