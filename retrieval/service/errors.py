"""Every refusal as ``{"error": "..."}`` with its status, and one log line per request."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import ShuttingDown

logger = logging.getLogger("retrieval.service")


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with one readable line (``k: Input should be less than or equal to 100``) and the details."""
    details = [{"loc": list(e.get("loc", ())), "msg": _message(e), "type": str(e.get("type", ""))}
               for e in error.errors()]
    message = "; ".join(f"{_field(d['loc'])}: {d['msg']}" for d in details) or "invalid request"
    return JSONResponse({"error": message, "detail": details}, status_code=422)


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message, but a text field sent where a file belongs is said in plain words."""
    message = str(error.get("msg", ""))
    if "Expected UploadFile" in message:
        return "expected a file upload (a multipart file field), got a text field"
    return message


def _field(loc: list[Any]) -> str:
    names = [str(part) for part in loc if part not in ("body", "query", "path")]
    return ".".join(names) or "request"


async def shutting_down(request: Request, error: ShuttingDown) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=503)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse({"error": f"internal error ({type(error).__name__}); the server log has the details"},
                        status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ShuttingDown, shutting_down)
    app.add_exception_handler(Exception, internal_error)


class RequestLog:
    """ASGI middleware: ``client method path status bytes ms`` once per request, refusals included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, size = time.perf_counter(), 500, 0

        async def logged_send(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info("%s %s %s %d %dB %.1fms", client[0], scope["method"], scope["path"], status, size,
                        1000 * (time.perf_counter() - started))
