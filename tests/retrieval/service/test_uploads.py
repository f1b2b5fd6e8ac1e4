"""Uploads: the size cap works while the body streams in (chunked, no Content-Length), boxes, bombs."""

from __future__ import annotations

import asyncio

import pytest

from downloader.images import ImageError
from downloader.metadata import BBox
from retrieval.service import ServiceConfig, create_app
from retrieval.service.uploads import UploadLimit, decode_photo, parse_bbox
from tests.conftest import encode, make_image
from tests.retrieval.service.conftest import png_header_only

CHUNK = 64 * 1024
BOUNDARY = b"s2s-boundary"


def multipart_start() -> bytes:
    return (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")


async def post_in_chunks(app, chunks: int, content_length: int | None = None,
                         finish: bool = False, timeout: float = 60) -> tuple[int, bytes, int]:
    """POST a multipart body of ``chunks`` x 64 KiB, one chunk per ASGI message, as a chunked upload does; then
    hang as a client still sending, or with ``finish`` close the form. Returns the status, the response body
    and how many chunks the app pulled."""
    pulled, sent = 0, []
    headers = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY), (b"host", b"test")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search", "raw_path": b"/api/search", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "root_path": ""}

    async def receive():
        nonlocal pulled
        if pulled >= chunks:
            if finish:
                return {"type": "http.request", "body": b"\r\n--" + BOUNDARY + b"--\r\n", "more_body": False}
            await asyncio.sleep(3600)  # a client that is still sending
        pulled += 1
        body = multipart_start() + b"\xff" * (CHUNK - len(multipart_start())) if pulled == 1 else b"\xff" * CHUNK
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=timeout)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), pulled


@pytest.fixture
def app(raw_engine, raw_index):
    return create_app(raw_engine, ServiceConfig(index=raw_index, max_upload_mb=1))


def test_chunked_upload_over_the_limit_is_refused_as_it_streams(app):
    status, body, pulled = asyncio.run(post_in_chunks(app, chunks=800))  # 50 MB offered
    assert status == 413 and b"upload too large: more than 1048576 bytes sent" in body
    assert pulled == 1024 * 1024 // CHUNK + 1  # stopped at the first chunk past 1 MiB


def test_content_length_over_the_limit_is_refused_before_reading(app):
    status, body, pulled = asyncio.run(post_in_chunks(app, chunks=800, content_length=50 * CHUNK * 16))
    assert status == 413 and pulled == 0 and b"Content-Length is 52428800 bytes" in body


def test_a_body_that_lies_about_its_length_is_still_counted():
    """A Content-Length under the limit does not switch the counting off."""
    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    status, body, pulled = asyncio.run(post_in_chunks(UploadLimit(app, CHUNK * 4), chunks=100, content_length=10))
    assert status == 413 and pulled == 5


def test_a_body_that_stops_arriving_is_refused_with_408():
    """A client that sends part of a body and then nothing (slowloris) does not hold the request for ever."""
    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    limited = UploadLimit(app, CHUNK * 100, idle_timeout=0.2)
    status, body, pulled = asyncio.run(post_in_chunks(limited, chunks=2, timeout=5))
    assert status == 408 and pulled == 2 and b"no body data for 0.2 s" in body


def test_under_the_limit_passes_through(app):
    """A 1 MiB cap still lets a small chunked upload through to the photo check."""
    status, body, pulled = asyncio.run(post_in_chunks(app, chunks=3, finish=True))
    assert pulled == 3 and status == 400 and body == b'{"error":"image: not an image"}'


@pytest.mark.parametrize("text, box", [(None, None), ("", None), ("  ", None), ("1,2,3,4", BBox(1, 2, 3, 4)),
                                       ("0.5, 1.5, 10, 20", BBox(0.5, 1.5, 10, 20))])
def test_parse_bbox(text, box):
    assert parse_bbox(text) == box


def test_decode_photo_cuts_the_box_from_the_upright_photo():
    image = make_image(80, 60)
    cut = decode_photo(encode(image, "PNG"), BBox(10, 20, 30, 25), max_pixels=10_000)
    assert cut.size == (30, 25) and cut.tobytes() == image.crop((10, 20, 40, 45)).tobytes()
    rotated = image.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    upright = decode_photo(encode(rotated, "JPEG", exif=exif, quality=95), None, max_pixels=10_000)
    assert upright.size == (60, 80)


def test_decode_photo_refuses_more_pixels_than_allowed():
    with pytest.raises(ImageError, match="image too large"):
        decode_photo(encode(make_image(101, 100), "PNG"), None, max_pixels=10_000)
    assert decode_photo(encode(make_image(100, 100), "PNG"), None, max_pixels=10_000).size == (100, 100)


def test_decode_photo_refuses_a_bomb_without_allocating_it():
    for width, height in ((30_000, 30_000), (7_000, 7_000)):  # over Pillow's own limit; over ours only
        with pytest.raises(ImageError, match="image too large"):
            decode_photo(png_header_only(width, height), None, max_pixels=40_000_000)
