"""What comes in: request bodies capped while they stream, box fields, uploaded photos decoded safely."""

from __future__ import annotations

import asyncio
import math
import warnings

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from downloader import images
from downloader.images import ImageError
from downloader.metadata import BBox


class UploadTooLarge(HTTPException):
    """A request body over the limit (413); FastAPI lets HTTP errors raised while it reads a form through."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(413, f"upload too large: {what}, the limit is {limit / 2**20:g} MB",
                         headers={"Connection": "close"})


class BodyStalled(HTTPException):
    """A request body that stopped arriving (408): a slow or stuck client must not hold a request for ever."""

    def __init__(self, timeout: float) -> None:
        super().__init__(408, f"request body stalled: no body data for {timeout:g} s", headers={"Connection": "close"})


class UploadLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes with 413 before reading it when Content-Length says so,
    and otherwise as soon as the bytes received pass the limit (chunked uploads), never after reading it whole;
    refuse with 408 a body whose next part takes over ``idle_timeout`` seconds to arrive."""

    def __init__(self, app: ASGIApp, limit: int, idle_timeout: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.limit:
            await _send_error(scope, send, UploadTooLarge(self.limit, f"Content-Length is {length} bytes"))
            return
        received, started, body_done = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # the app waits for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except asyncio.TimeoutError:
                raise BodyStalled(self.idle_timeout) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadTooLarge(self.limit, f"more than {self.limit} bytes sent")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except (UploadTooLarge, BodyStalled) as error:  # raised outside the app's exception handlers
            if started:
                raise
            await _send_error(scope, send, error)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(scope: Scope, send: Send, error: HTTPException) -> None:
    from starlette.responses import JSONResponse

    response = JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def parse_bbox(text: str | None, field: str = "bbox") -> BBox | None:
    """``LEFT,TOP,WIDTH,HEIGHT`` in pixels of the photo as stored (before EXIF rotation); empty means no box.

    Raises:
        ValueError: not four finite numbers, a negative corner, or a zero size; the message names ``field``.
    """
    if text is None or not text.strip():
        return None
    try:
        left, top, width, height = (float(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"{field}: expected LEFT,TOP,WIDTH,HEIGHT in pixels, got {text[:80]!r}") from None
    if not all(math.isfinite(v) for v in (left, top, width, height)):
        raise ValueError(f"{field}: {text!r} has a value that is not a finite number")
    if width <= 0 or height <= 0 or left < 0 or top < 0:
        raise ValueError(f"{field}: {text!r}: width and height must be positive, left and top at least 0")
    return BBox(left, top, width, height)


def decode_photo(data: bytes, bbox: BBox | None, max_pixels: int) -> Image.Image:
    """An uploaded photo as upright RGB, cut to ``bbox``: the same pixels ``retrieval.query`` sees for the file.

    Raises:
        ImageError: empty, not an image, truncated, over ``max_pixels`` (a decompression bomb), or a box outside it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below by max_pixels
            decoded = images.decode(data, max_pixels=max_pixels)
    except Image.DecompressionBombError as error:
        raise ImageError(f"image too large: {error}") from None
    return images.whole(decoded) if bbox is None else images.crop(decoded, bbox)
