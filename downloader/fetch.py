"""Fetch one URL with ``requests``: a session per thread, retries with backoff, a size cap."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class FetchError(Exception):
    """A URL that gave no usable body; ``reason`` is short and groupable (``http 404``, ``timeout``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Cancelled(Exception):
    """The run is stopping (Ctrl-C): give up on this URL without recording a failure."""


@dataclass(frozen=True)
class FetchConfig:
    """How to fetch: per-request timeout (s), retries after the first try, backoff base (s), body cap (bytes)."""

    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5
    max_bytes: int = 30 * 1024 * 1024
    pool_size: int = 4
    user_agent: str = "street2shop-search/0.1 (+research downloader)"


class Fetcher:
    """Thread-safe fetcher: each thread gets its own pooled ``requests.Session``."""

    def __init__(self, config: FetchConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=self.config.pool_size, pool_maxsize=self.config.pool_size)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = self.config.user_agent
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def get(self, url: str) -> bytes:
        """Return the body of ``url``, retrying timeouts, connection errors and 5xx (never 4xx).

        Raises:
            FetchError: the last attempt's reason.
            Cancelled: ``stop`` was set while waiting.
        """
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            if self.stop.is_set():
                raise Cancelled()
            try:
                return self._get_once(url)
            except FetchError as error:
                retryable = error.reason in ("timeout", "connection error") or (
                    error.reason.startswith("http ") and int(error.reason[5:]) in RETRY_STATUSES
                )
                if not retryable or attempt == attempts - 1:
                    raise
            delay = self.config.backoff * (2 ** attempt) * (0.5 + random.random())
            if self.stop.wait(delay):
                raise Cancelled()
        raise AssertionError("unreachable")

    def _get_once(self, url: str) -> bytes:
        timeout = self.config.timeout
        deadline = time.monotonic() + 3 * timeout
        try:
            with self._session().get(url, timeout=timeout, stream=True, allow_redirects=True) as response:
                if response.status_code != 200:
                    raise FetchError(f"http {response.status_code}", response.reason or "")
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
                    raise FetchError("too large", f"{declared} bytes declared")
                chunks, size = [], 0
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    size += len(chunk)
                    if size > self.config.max_bytes:
                        raise FetchError("too large", f"over {self.config.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError("timeout", f"body still arriving after {3 * timeout:g}s")
                    if self.stop.is_set():
                        raise Cancelled()
                    chunks.append(chunk)
                body = b"".join(chunks)
                if declared and declared.isdigit() and len(body) < int(declared):
                    raise FetchError("truncated body", f"{len(body)} of {declared} bytes")
                return body
        except requests.exceptions.Timeout as error:
            raise FetchError("timeout", type(error).__name__) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
            raise FetchError("connection error", str(error)[:200]) from None
        except requests.exceptions.TooManyRedirects:
            raise FetchError("too many redirects") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as error:
            raise FetchError("bad url", str(error)[:200]) from None
