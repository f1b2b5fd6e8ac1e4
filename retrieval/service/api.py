"""The JSON API: health, categories, search and compare; photos are decoded in threads, embedded in batches."""

from __future__ import annotations

import asyncio
import time
from dataclasses import astuple
from typing import Any

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from downloader.images import ImageError
from downloader.metadata import BBox

from .batching import Batcher
from .config import ServiceConfig
from .uploads import decode_photo, parse_bbox

BBOX_HELP = "LEFT,TOP,WIDTH,HEIGHT in pixels of the photo as stored (before EXIF rotation); empty: the whole photo"


class MatchOut(BaseModel):
    rank: int
    product: int
    photo: int
    category: str
    distance: float
    score: float
    image_url: str


class QueryOut(BaseModel):
    """What the search used: the box (None for the whole photo), the category (None for all) and k."""

    bbox: list[float] | None
    category: str | None
    k: int


class SearchOut(BaseModel):
    matches: list[MatchOut]
    query: QueryOut
    took_ms: float


class CompareOut(BaseModel):
    distance: float
    score: float
    same: bool | None
    threshold: float | None
    took_ms: float


class CategoryOut(BaseModel):
    name: str
    photos: int
    products: int


class CategoriesOut(BaseModel):
    categories: list[CategoryOut]


class ErrorOut(BaseModel):
    error: str


REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "not an image, truncated, a decompression bomb, a bad box, "
                                            "or an unknown category"},
    413: {"model": ErrorOut, "description": "upload over --max-upload-mb, refused while it streams in"},
    422: {"model": ErrorOut, "description": "a missing field or a parameter out of range"},
}


def categories_of(engine: Any) -> list[CategoryOut]:
    index = engine.index
    return [CategoryOut(name=name, photos=stop - start, products=int(len(np.unique(index.products[start:stop]))))
            for name, (start, stop) in sorted(engine.slices.items())]


def box_of(text: str | None, field: str) -> BBox | None:
    """The box of a form field; 400 naming the field when it is not one."""
    try:
        return parse_bbox(text, field)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None


async def network_input(engine: Any, batcher: Batcher, config: ServiceConfig, decoding: asyncio.Semaphore,
                        data: bytes, box: BBox | None, field: str) -> np.ndarray:
    """An uploaded photo decoded, cut and preprocessed in a thread (at most ``config.max_decoding`` at once, which
    bounds the memory of decoded pixels); 400 when it is not usable."""
    def work() -> np.ndarray:
        return engine.extractor.prepare(decode_photo(data, box, config.max_pixels))

    try:
        with batcher.arriving():
            async with decoding:
                return await run_in_threadpool(work)
    except ImageError as error:
        raise HTTPException(400, f"{field}: {error}") from None


def api_router(engine: Any, batcher: Batcher, config: ServiceConfig) -> APIRouter:
    """The routes under ``/api`` and ``/healthz`` for one engine and its batcher."""
    router = APIRouter()
    categories = CategoriesOut(categories=categories_of(engine))
    decoding = asyncio.Semaphore(config.max_decoding)

    @router.get("/healthz", summary="Is the service up, and what it serves")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "photos": len(engine.index), "categories": len(engine.slices),
                "backbone": engine.index.attrs.get("backbone", {}).get("backbone"), "head": engine.head is not None,
                "max_upload_mb": config.max_upload_mb, "batches": batcher.batches, "batched_photos": batcher.photos}

    @router.get("/api/categories", response_model=CategoriesOut, summary="Categories with their photo counts")
    def list_categories() -> CategoriesOut:
        return categories

    @router.post("/api/search", response_model=SearchOut, responses=REFUSALS,
                 summary="The k shop products that look most like a street photo, each product once")
    async def search(image: UploadFile = File(description="the street photo (JPEG, PNG, WebP, ...)"),
                     bbox: str | None = Form(None, description=BBOX_HELP),
                     category: str | None = Form(None, description="rank only this category; empty: all"),
                     k: int = Form(10, ge=1, le=100, description="how many products")) -> SearchOut:
        started = time.perf_counter()
        category = category or None
        if category is not None and category not in engine.slices:
            raise HTTPException(400, f"category: no shop photo of category {category[:80]!r} in the index "
                                     f"(it has: {', '.join(sorted(engine.slices))})")
        box = box_of(bbox, "bbox")
        prepared = await network_input(engine, batcher, config, decoding, await image.read(), box, "image")
        matches = await asyncio.wrap_future(batcher.search(prepared, category, k))
        return SearchOut(matches=[MatchOut(rank=m.rank, product=m.product, photo=m.photo, category=m.category,
                                           distance=m.distance, score=m.score, image_url=f"/shop/{m.photo}.jpg")
                                  for m in matches],
                         query=QueryOut(bbox=list(astuple(box)) if box else None, category=category, k=k),
                         took_ms=round(1000 * (time.perf_counter() - started), 2))

    @router.post("/api/compare", response_model=CompareOut, responses=REFUSALS,
                 summary="Are two photos of the same item? Distance, calibrated score and the call")
    async def compare(a: UploadFile = File(description="the first photo"),
                      b: UploadFile = File(description="the second photo"),
                      bbox_a: str | None = Form(None, description=BBOX_HELP),
                      bbox_b: str | None = Form(None, description=BBOX_HELP)) -> CompareOut:
        started = time.perf_counter()
        box_a, box_b = box_of(bbox_a, "bbox_a"), box_of(bbox_b, "bbox_b")
        left, right = await asyncio.gather(
            network_input(engine, batcher, config, decoding, await a.read(), box_a, "a"),
            network_input(engine, batcher, config, decoding, await b.read(), box_b, "b"))
        result = await asyncio.wrap_future(batcher.compare(left, right))
        return CompareOut(distance=result.distance, score=result.score, same=result.same,
                          threshold=result.threshold, took_ms=round(1000 * (time.perf_counter() - started), 2))

    return router
