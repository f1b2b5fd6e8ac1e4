"""The FastAPI application: the JSON API, the shop photos by id, and the page, over one loaded engine."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import ErrorOut, api_router
from .batching import Batcher
from .config import ServiceConfig
from .errors import RequestLog, install_error_handlers
from .uploads import UploadLimit

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def warm_up(engine: Any, batcher: Batcher) -> float:
    """Build the networks and run one photo through the whole path, so the first request is not slow; ms taken."""
    started = time.perf_counter()
    prepared = engine.extractor.prepare(Image.new("RGB", (64, 64), (255, 255, 255)))
    batcher.search(prepared, None, 1).result()
    return 1000 * (time.perf_counter() - started)


def shop_route(app: FastAPI, engine: Any) -> None:
    """``GET /shop/<photo>.jpg``: an index photo looked up by its id; the request never names a file."""
    rows: dict[str, int] = {}
    for row, photo in enumerate(engine.index.photos):
        rows.setdefault(str(int(photo)), row)

    @app.get("/shop/{photo}.jpg", response_class=FileResponse, summary="A shop photo of the index, by photo id",
             responses={404: {"model": ErrorOut}})
    def shop_photo(photo: str) -> FileResponse:
        row = rows.get(photo)
        if row is None:
            raise HTTPException(404, f"no shop photo {photo[:40]!r} in the index")
        path = Path(engine.index.path(row))
        if not path.is_file():
            raise HTTPException(404, f"shop photo {photo} is in the index but its file is missing")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


class HeadAsGet:
    """ASGI middleware: answer ``HEAD`` as the ``GET`` of the same URL without its body (health checks and link
    checkers send HEAD; FastAPI's routes would answer 405)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def create_app(engine: Any, config: ServiceConfig) -> FastAPI:
    """The service over a loaded ``retrieval.SearchEngine``; the batcher runs while the app's lifespan does."""
    config.validate()
    batcher = Batcher(engine, config.max_batch, config.batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        took = await run_in_threadpool(warm_up, engine, batcher)
        logger.info("ready: %d shop photos in %d categories; warm-up search %.0f ms",
                    len(engine.index), len(engine.slices), took)
        try:
            yield
        finally:
            batcher.close()

    app = FastAPI(title="street2shop search", lifespan=lifespan,
                  description="Find the shop products in a street photo, and tell whether two photos show the "
                              "same item. Errors are `{\"error\": \"...\"}`.")
    install_error_handlers(app)
    app.include_router(api_router(engine, batcher, config))
    shop_route(app, engine)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.add_middleware(UploadLimit, limit=config.max_upload_bytes, idle_timeout=config.body_timeout_s)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], max_age=3600)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestLog)
    app.state.batcher = batcher
    return app
