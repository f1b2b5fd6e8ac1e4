"""The real server: uvicorn on 127.0.0.1, raw sockets for the upload cap, concurrent clients, the command."""

from __future__ import annotations

import io
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from retrieval.serve import bind, main
from retrieval.service import ServiceConfig, create_app
from tests.conftest import encode, make_image
from tests.retrieval.service.conftest import live_server

ROOT = Path(__file__).resolve().parents[3]


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        data += part
    return data


@pytest.fixture(scope="module")
def server(raw_engine, raw_index):
    with live_server(create_app(raw_engine, ServiceConfig(index=raw_index, max_upload_mb=1))) as url:
        yield url


def test_chunked_upload_is_refused_while_the_client_is_still_sending(server):
    """No Content-Length: the 413 comes back after about 1 MiB of the 64 MiB the client means to send."""
    boundary = b"xyz"
    head = (b"POST /api/search HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n")
    part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunk = b"\xff" * 65536
    sent, answered = 0, False
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(head + b"%x\r\n" % len(part) + part + b"\r\n")
        for _ in range(1024):  # 64 MiB at most
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if select.select([sock], [], [], 0.01)[0]:
                answered = True
                break
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"error":"upload too large: more than 1048576 bytes sent' in response
    assert answered or sent < 64 * 2**20
    assert sent < 4 * 2**20  # refused within a few chunks of the limit, not after the whole body


def test_content_length_over_the_limit_is_answered_without_the_body(server):
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: test\r\nContent-Length: 104857600\r\n"
                     b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n")
        started = time.monotonic()
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 5
    assert b"Content-Length is 104857600 bytes" in response


def test_small_answers_are_not_held_back_by_nagle(server):
    """Regression: ``bind`` made its socket with protocol 0, so asyncio never set TCP_NODELAY on the
    connections and each response's body waited for the client's delayed ACK (about 40 ms a request)."""
    probe = bind("127.0.0.1", 0)
    assert probe.proto == socket.IPPROTO_TCP
    probe.close()
    times = []
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(15):
            started = time.perf_counter()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            data = b""
            while not data.endswith(b"}"):
                data += sock.recv(65536)
            times.append(time.perf_counter() - started)
    assert sorted(times)[len(times) // 2] < 0.03, times


class SlowExtractor:
    """The tiny backbone taking 0.4 s for its first network call: the other requests queue meanwhile."""

    def __init__(self, extractor) -> None:
        self.inner = extractor
        self.calls: list[int] = []

    def describe(self):
        return self.inner.describe()

    def prepare(self, image):
        return self.inner.prepare(image)

    def embed(self, images, bboxes=None):
        return self.inner.embed(images, bboxes)

    def predict(self, inputs):
        self.calls.append(len(inputs))
        if len(self.calls) == 2:  # the first is the warm-up
            time.sleep(0.4)
        return self.inner.predict(inputs)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(raw_index, tiny_extractor):
    from retrieval import SearchEngine

    slow = SlowExtractor(tiny_extractor)
    engine = SearchEngine.load(raw_index, extractor=slow)
    photos = [encode(make_image(60, 60, seed=40 + n)) for n in range(9)]
    expected = [[m.photo for m in engine.search(Image.open(io.BytesIO(data)), k=5)] for data in photos]
    with live_server(create_app(engine, ServiceConfig(index=raw_index, batch_wait_ms=50))) as url:
        def ask(data: bytes) -> list[int]:
            response = httpx.post(url + "/api/search", files={"image": ("p.jpg", data, "image/jpeg")},
                                  data={"k": "5"}, timeout=60)
            assert response.status_code == 200, response.text
            return [m["photo"] for m in response.json()["matches"]]

        with ThreadPoolExecutor(len(photos)) as pool:
            answers = list(pool.map(ask, photos))
        health = httpx.get(url + "/healthz").json()
    assert answers == expected
    assert health["batched_photos"] == 1 + len(photos)  # the warm-up and every request, once
    assert health["batches"] <= 4 and max(slow.calls) > 1, slow.calls  # not one network call per request


def test_photos_are_decoded_at_most_max_decoding_at_a_time(raw_engine, raw_index, monkeypatch):
    """A 100 KB PNG can decode to 100+ MB of pixels: concurrent decodes are capped so memory stays bounded."""
    import retrieval.service.api as api

    running, most, lock = 0, 0, threading.Lock()
    decode = api.decode_photo

    def counted(*args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.2)
            return decode(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(api, "decode_photo", counted)
    with live_server(create_app(raw_engine, ServiceConfig(index=raw_index, max_decoding=2))) as url:
        def ask(seed: int) -> int:
            files = {"image": ("p.jpg", encode(make_image(40, 40, seed=seed)), "image/jpeg")}
            return httpx.post(url + "/api/search", files=files, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(ask, range(8)))
    assert statuses == [200] * 8 and most == 2, (statuses, most)


SERVE_WITH_TINY = ("import sys; from embeddings.extraction.backbones import BACKBONES; from tests.conftest import TINY; "
                   "BACKBONES['tiny'] = TINY; from retrieval.serve import main; sys.exit(main(sys.argv[1:]))")


def test_the_command_serves_logs_each_request_and_stops_on_ctrl_c(raw_index):
    process = subprocess.Popen([sys.executable, "-c", SERVE_WITH_TINY, "--index", str(raw_index), "--port", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any(line.startswith("serving ") for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        url = next(line for line in lines if line.startswith("serving ")).split(" at ")[1].split("/ ")[0]
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.2)
        response = httpx.post(url + "/api/search", files={"image": ("p.jpg", encode(make_image()), "image/jpeg")})
        assert response.status_code == 200 and len(response.json()["matches"]) == 10
        assert httpx.post(url + "/api/search", data={"k": "0"}).status_code == 422
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
        reader.join(10)
    output = "".join(lines)
    assert code == 0, output
    assert "warm-up search" in output
    assert output.count("POST /api/search 200") == 1 and output.count("POST /api/search 422") == 1
    assert output.count("GET /healthz 200") >= 1 and "Traceback" not in output


def test_command_errors_are_one_line_with_exit_codes(tmp_path, capsys, raw_index):
    assert main(["--index", str(tmp_path / "missing.h5"), "--port", "0"]) == 3
    assert capsys.readouterr().err.strip().endswith("index does not exist (build one with python -m retrieval.index)")
    assert main(["--index", str(raw_index), "--max-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-batch must be in 1..1024, got 0"
    busy = bind("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        assert main(["--index", str(raw_index), "--port", str(port)]) == 2
        assert capsys.readouterr().err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    finally:
        busy.close()
    assert main(["--index", str(raw_index), "--port", "0"]) == 3  # built with the tests' stand-in backbone
    assert "unknown backbone 'tiny'" in capsys.readouterr().err


def test_import_retrieval_does_not_import_fastapi():
    code = "import sys, retrieval; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr
