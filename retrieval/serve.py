"""``python -m retrieval.serve --index index.h5``: the search service, an HTTP API and a page, on uvicorn."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from .service.config import ServiceConfig

EXIT_USAGE, EXIT_INDEX = 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.serve",
        description="Serve an index over HTTP: POST /api/search (a street photo, optional box and category -> the "
                    "k best shop products), POST /api/compare (two photos -> same item?), GET /shop/<photo>.jpg, "
                    "a page at / and the OpenAPI schema at /docs. Loads the index and its networks once; "
                    "concurrent requests share the network in batches.")
    parser.add_argument("--index", type=Path, required=True, help="the index (python -m retrieval.index)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                                                            "only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0,
                        help="largest request body, all photos together; larger is refused with 413 (default: 10)")
    parser.add_argument("--max-batch", type=int, default=16, help="most photos in one network call (default: 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a batch waits for requests still arriving (default: 5)")
    parser.add_argument("--body-timeout-s", type=float, default=30.0,
                        help="refuse (408) an upload whose next part takes longer than this to arrive, so that "
                             "stalled clients do not hold requests (default: 30)")
    parser.add_argument("--max-decoding", type=int, default=4,
                        help="most uploaded photos decoded at once; bounds memory, as a small compressed photo can "
                             "decode to 100+ MB of pixels (default: 4)")
    parser.add_argument("--head", type=Path, help="the head folder, if it moved since the index was built")
    parser.add_argument("--weights", help="the backbone weights file, if the index was built from one")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let pages of this origin (https://shop.example, or *) call the API from the browser; "
                             "repeat for more (default: none, same origin only)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log level (default: info: one line per request)")
    return parser


class ListenError(RuntimeError):
    """The address cannot be listened on (in use, not this machine's, a privileged port)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; binding before the networks load makes a busy port a quick, clear error.

    Raises:
        ListenError: the address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServiceConfig, log_level: str = "info") -> int:
    """Load the index and networks, bind, and serve until interrupted. Returns the exit code.

    Raises:
        FileNotFoundError, retrieval.IndexFileError, ValueError: the index, head or weights cannot be used.
        ListenError: the address cannot be bound.
    """
    import uvicorn

    from .engine import SearchEngine
    from .service import create_app

    config.validate()
    sock = bind(config.host, config.port)
    try:
        engine = SearchEngine.load(config.index, head=config.head, weights=config.weights)
        engine.extractor  # build the backbone now: a weights problem is an error here, not in the first request
        app = create_app(engine, config)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {config.index} at http://{shown}:{port}/ (API schema at /docs); Ctrl-C stops", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level=log_level, access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
    finally:
        sock.close()
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from embeddings.extraction.backbones import WeightsUnavailableError
    from embeddings.extraction.cache import CacheError

    try:
        config = ServiceConfig(index=args.index, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
                               max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, head=args.head,
                               body_timeout_s=args.body_timeout_s, max_decoding=args.max_decoding,
                               weights=args.weights, cors_origins=tuple(args.cors_origin)).validate()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return serve(config, args.log_level)
    except ListenError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, CacheError, WeightsUnavailableError) as error:  # IndexFileError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INDEX


if __name__ == "__main__":
    sys.exit(main())
