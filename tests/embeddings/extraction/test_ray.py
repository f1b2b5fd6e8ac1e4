"""The Ray engine on a local Ray instance with 2 CPUs (started once for this module: Ray starts slowly)."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from embeddings import BuildConfig, build, read_vectors
from embeddings.extraction.precision import choose_precision
from tests.conftest import TINY, make_image

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        make_image(60 + index, 48, seed=index).save(folder / f"{index:02d}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_a_ray_address_where_nothing_listens_is_a_quick_one_line_error(tmp_path, capsys):
    import socket
    import time

    from embeddings.build import main

    photos(tmp_path / "images", 1)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    code = main(["--images", str(tmp_path / "images"), "--out", str(tmp_path / "v.h5"), "--backbone", "mobilenet_v2",
                 "--weights", "none", "--quiet", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"])
    assert code == 2 and time.monotonic() - start < 60
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no Ray cluster at --ray-address 127.0.0.1:{port}") and "\n" not in err
    assert not ray.is_initialized() and not (tmp_path / "v.h5").exists()


def config(tmp_path: Path, out: str, **options) -> BuildConfig:
    return BuildConfig(out=tmp_path / out, images=tmp_path / "images", backbone=TINY, weights=None, batch_size=3,
                       **options)


def test_ray_engine_resumes_a_killed_run_and_gives_the_local_engine_vectors(local_ray, tmp_path):
    photos(tmp_path / "images", 10)
    local = build(config(tmp_path, "local.h5"))
    assert (local.computed, len(local.failures)) == (10, 1)
    partial = build(config(tmp_path, "ray.h5", shard=(0, 2)))  # what a run killed half way leaves
    summary = build(config(tmp_path, "ray.h5", engine="ray", precision="auto"))
    assert (summary.present, summary.computed) == (partial.computed, 10 - partial.computed)
    assert [key for key, _ in summary.failures] == ["broken.jpg"] and "not an image" in summary.failures[0][1]
    expected, found = read_vectors(tmp_path / "local.h5"), read_vectors(tmp_path / "ray.h5")
    assert len(found.ids) == len(set(found.ids)) == 10
    np.testing.assert_allclose(found.vectors[found.rows(expected.ids)], expected.vectors, rtol=1e-5, atol=1e-6)
    assert found.attrs["precision"] == choose_precision("auto")  # float32 on a CPU without AMX / AVX512-BF16
    assert found.attrs["decode"] == "exact"


def dies_once(marker: Path):
    """A decoding task that kills its Ray worker process the first time it runs, then decodes normally."""
    def decode(batch, size, decode):
        from embeddings.extraction.ray_engine import decode_rows

        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return decode_rows(batch, size, decode)

    return decode


def test_a_dead_ray_worker_is_retried_and_nothing_is_lost_or_duplicated(local_ray, tmp_path):
    from embeddings.extraction.ray_engine import RayEngine

    photos(tmp_path / "images", 6)
    settings = config(tmp_path, "ray.h5", engine="ray", decode="fast")
    summary = build(settings, engine=RayEngine(settings, decode_fn=dies_once(tmp_path / "died")))
    assert (tmp_path / "died").read_text() == "died"
    assert summary.computed == 6 and [key for key, _ in summary.failures] == ["broken.jpg"]
    found = read_vectors(tmp_path / "ray.h5")
    assert sorted(found.ids) == [f"{i:02d}.jpg" for i in range(6)]
    local = build(config(tmp_path, "local.h5", decode="fast"))
    assert local.computed == 6
    expected = read_vectors(tmp_path / "local.h5")
    np.testing.assert_allclose(found.vectors[found.rows(expected.ids)], expected.vectors, rtol=1e-5, atol=1e-6)


def records_process(folder: Path):
    """A decoding task that notes the title Ray gives its process (``ray::<what it runs>``), then decodes."""
    def decode(batch, size, decode):
        from embeddings.extraction.ray_engine import decode_rows

        title = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
        (folder / f"{os.getpid()}-{len(list(folder.iterdir()))}").write_text(title)
        return decode_rows(batch, size, decode)

    return decode


def test_decoding_runs_in_tasks_apart_from_the_network_actor(local_ray, tmp_path):
    """Ray Data fuses map steps with equal resources into the network's actor, which then decodes and embeds
    each batch in turn (ray/local 0.66 measured); decoding must overlap the network instead."""
    from embeddings.extraction.ray_engine import RayEngine

    photos(tmp_path / "images", 6)
    (tmp_path / "titles").mkdir()
    settings = config(tmp_path, "ray.h5", engine="ray")
    summary = build(settings, engine=RayEngine(settings, decode_fn=records_process(tmp_path / "titles")))
    assert summary.computed == 6
    titles = {path.read_text() for path in (tmp_path / "titles").iterdir()}
    assert titles and all(title.startswith("ray::") for title in titles), titles
    assert not any("Embedder" in title for title in titles), titles
