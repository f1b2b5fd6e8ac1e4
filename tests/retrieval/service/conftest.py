"""A tiny served index: generated shop photos of two categories embedded by the tiny stand-in backbone."""

from __future__ import annotations

import json
import struct
import zlib
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import make_image

CATEGORIES = ("bags", "dresses")
PRODUCTS = 12  # per category: more than the ten results the page shows


def write_shop(root: Path) -> Path:
    """``PRODUCTS`` products per category, the first two with a second photo; returns the manifest."""
    lines, photo = [], 100
    for c, category in enumerate(CATEGORIES):
        for product in range(PRODUCTS):
            for view in range(2 if product < 2 else 1):
                path = f"shop/{photo}.jpg"
                (root / "shop").mkdir(parents=True, exist_ok=True)
                make_image(48, 64, seed=1000 * c + 10 * product + view).save(root / path, quality=95)
                lines.append(json.dumps({"path": path, "kind": "shop", "photo": photo, "product": 500 * c + product,
                                         "category": category, "split": "test", "bbox": None}) + "\n")
                photo += 1
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(lines))
    return manifest


def write_head(folder: Path, extractor) -> Path:
    """A small untrained head folder, as ``embeddings.train`` writes it (model.keras, config.json)."""
    from embeddings.learning.head import HeadConfig, build_head

    folder.mkdir(parents=True, exist_ok=True)
    config = HeadConfig(hidden=(16,), dim=4, dropout=0.0)
    build_head(extractor.dim, config).save(folder / "model.keras")
    (folder / "config.json").write_text(json.dumps({
        "format": "street2shop-head/1", "head": asdict(config), "vectors": extractor.describe(),
        "calibration": {"a": -8.0, "b": 4.0, "threshold": 0.6}}))
    return folder


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but holds almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def shop_data(tmp_path_factory, tiny_extractor) -> tuple[Path, Path]:
    """``(vectors.h5, manifest.jsonl)`` of the generated shop photos."""
    import numpy as np

    from embeddings import Vectors, write_vectors

    root = tmp_path_factory.mktemp("shop")
    manifest = write_shop(root)
    ids = [json.loads(line)["path"] for line in manifest.read_text().splitlines()]
    vectors = tiny_extractor.embed([root / path for path in ids])  # in this process: quick
    write_vectors(root / "vectors.h5", Vectors(np.array(ids, dtype=object), vectors, tiny_extractor.describe()))
    return root / "vectors.h5", manifest


@pytest.fixture(scope="session")
def raw_index(shop_data, tmp_path_factory) -> Path:
    from retrieval import build_index

    out = tmp_path_factory.mktemp("raw") / "index.h5"
    build_index(shop_data[0], shop_data[1], out)
    return out


@pytest.fixture(scope="session")
def head_index(shop_data, tmp_path_factory, tiny_extractor) -> Path:
    from retrieval import build_index

    folder = tmp_path_factory.mktemp("head")
    build_index(shop_data[0], shop_data[1], folder / "index.h5", write_head(folder / "head", tiny_extractor))
    return folder / "index.h5"


@pytest.fixture(scope="session")
def raw_engine(raw_index, tiny_extractor):
    from retrieval import SearchEngine

    return SearchEngine.load(raw_index, extractor=tiny_extractor)


@pytest.fixture(scope="session")
def head_engine(head_index, tiny_extractor):
    from retrieval import SearchEngine

    return SearchEngine.load(head_index, extractor=tiny_extractor)


def client_for(engine, index: Path, raise_server_exceptions: bool = True, **settings):
    from fastapi.testclient import TestClient

    from retrieval.service import ServiceConfig, create_app

    return TestClient(create_app(engine, ServiceConfig(index=index, **settings)),
                      raise_server_exceptions=raise_server_exceptions)


@pytest.fixture
def client(raw_engine, raw_index):
    with client_for(raw_engine, raw_index, max_upload_mb=0.5) as client:
        yield client


@pytest.fixture
def head_client(head_engine, head_index):
    with client_for(head_engine, head_index) as client:
        yield client


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    from retrieval.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
