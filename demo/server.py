"""A small HTTP server on 127.0.0.1 that stands in for the dead Street2Shop hosts.

It serves files, and on chosen paths misbehaves as real hosts do: errors, slow replies,
errors that clear on retry (500, or 429 with ``Retry-After``), redirects, bodies without a length,
broken ``Content-Encoding``. It counts requests in flight (``max_active``) and logs when each
request came (``log``). Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import mimetypes
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up (a timeout on its side) is expected here


@dataclass
class Route:
    """How one path answers: ``fail_times`` first requests get ``fail_status`` (with ``fail_headers``);
    ``delay`` seconds before replying; ``headers`` added to the reply; ``unsized``: no Content-Length,
    the body ends when the connection closes."""

    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    delay: float = 0.0
    fail_times: int = 0
    redirect: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fail_status: int = 500
    fail_headers: dict[str, str] = field(default_factory=dict)
    unsized: bool = False


class LoopbackServer:
    """Serve ``routes`` (path to ``Route``) and the files under ``root``; ``latency`` is added to every reply."""

    def __init__(self, routes: dict[str, Route] | None = None, root: str | Path | None = None,
                 latency: float = 0.0) -> None:
        self.routes = dict(routes or {})
        self.root = Path(root) if root is not None else None
        self.latency = latency
        self.hits: Counter[str] = Counter()
        self.log: list[tuple[str, float]] = []  # (path, time.monotonic() when the request came)
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _answer(self, path: str) -> Route:
        with self._lock:
            self.hits[path] += 1
            count = self.hits[path]
            self.log.append((path, time.monotonic()))
        route = self.routes.get(path)
        if route is None and self.root is not None:
            file = (self.root / path.lstrip("/")).resolve()
            if file.is_file() and self.root.resolve() in file.parents:
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                route = Route(file.read_bytes(), content_type=kind)
        if route is None:
            return Route(b"not found", status=404, content_type="text/plain")
        if count <= route.fail_times:
            return Route(b"server error", status=route.fail_status, content_type="text/plain", delay=route.delay,
                         headers=route.fail_headers)
        return route

    def _enter(self, change: int) -> None:
        with self._lock:
            self.active += change
            self.max_active = max(self.max_active, self.active)

    def start(self) -> "LoopbackServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body, sent apart, wait on delayed ACKs (40 ms)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server._enter(1)
                try:
                    self._reply(server._answer(self.path.split("?")[0]))
                finally:
                    server._enter(-1)

            def _reply(self, route: Route) -> None:
                time.sleep(server.latency + route.delay)
                try:
                    if route.redirect is not None:
                        self.send_response(302)
                        self.send_header("Location", route.redirect)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(route.status)
                    self.send_header("Content-Type", route.content_type)
                    for name, value in route.headers.items():
                        self.send_header(name, value)
                    if route.unsized:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    else:
                        self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to do

            def log_message(self, *args: object) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
