"""Fetch one URL with ``requests``: a session per thread, retries with backoff, a size cap.

Every failure, whatever ``requests`` or the connection raised, becomes a ``FetchError`` with a short
groupable reason. A 429 or 503 that says when to come back (``Retry-After``) is not retried here:
it raises ``RetryAfter`` so that the scheduler can put the photo aside without holding a worker.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
UNREACHABLE = frozenset({"timeout", "connection error"})  # reasons that say the host itself is not answering


class FetchError(Exception):
    """A URL that gave no usable body; ``reason`` is short and groupable (``http 404``, ``timeout``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryAfter(FetchError):
    """The host asked us to come back in ``seconds`` (HTTP 429/503 with ``Retry-After``)."""

    def __init__(self, reason: str, seconds: float) -> None:
        super().__init__(reason, f"Retry-After {seconds:g} s")
        self.seconds = seconds


class Cancelled(Exception):
    """The run is stopping (a second Ctrl-C): give up on this URL without recording a failure."""


@dataclass(frozen=True)
class FetchConfig:
    """How to fetch: per-request timeout (s), retries after the first try, backoff base (s), body cap (bytes)."""

    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5
    max_bytes: int = 30 * 1024 * 1024
    pool_size: int = 4
    user_agent: str = "street2shop-search/0.1 (+research downloader)"

    def validate(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):  # inf overflows the socket, nan fails it
            raise ValueError(f"timeout must be a finite number > 0, got {self.timeout}")
        if not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise ValueError(f"backoff must be a finite number >= 0, got {self.backoff}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.max_bytes < 1:
            raise ValueError(f"the body cap (--max-mb) must be at least 1 byte, got {self.max_bytes}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _retryable(error: FetchError) -> bool:
    if error.reason in UNREACHABLE:
        return True
    return error.reason.startswith("http ") and int(error.reason[5:]) in RETRY_STATUSES


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
            RetryAfter: a 429/503 with a usable ``Retry-After`` (not retried here).
            FetchError: the last attempt's reason.
            Cancelled: ``stop`` was set while waiting.
        """
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            if self.stop.is_set():
                raise Cancelled()
            try:
                return self._get_once(url)
            except RetryAfter:
                raise
            except FetchError as error:
                if not _retryable(error) or attempt == attempts - 1:
                    raise
            delay = self.config.backoff * (2 ** attempt) * (0.5 + random.random())
            if self.stop.wait(delay):
                raise Cancelled()
        raise AssertionError("unreachable")

    def _get_once(self, url: str) -> bytes:
        try:
            with self._session().get(url, timeout=self.config.timeout, stream=True, allow_redirects=True) as response:
                return self._body(response)
        except requests.exceptions.Timeout as error:
            raise FetchError("timeout", type(error).__name__) from None
        except requests.exceptions.ContentDecodingError as error:
            raise FetchError("bad content encoding", str(error)[:200]) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
            raise FetchError("connection error", str(error)[:200]) from None
        except requests.exceptions.TooManyRedirects:
            raise FetchError("too many redirects") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, requests.exceptions.URLRequired) as error:
            raise FetchError("bad url", str(error)[:200]) from None
        except requests.exceptions.RequestException as error:
            raise FetchError("request error", f"{type(error).__name__}: {error}"[:200]) from None
        except (OSError, ValueError) as error:  # a socket or URL error that requests did not wrap
            raise FetchError("connection error", f"{type(error).__name__}: {error}"[:200]) from None

    def _body(self, response: requests.Response) -> bytes:
        if response.status_code != 200:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if response.status_code in RETRY_AFTER_STATUSES and wait is not None:
                raise RetryAfter(f"http {response.status_code}", wait)
            raise FetchError(f"http {response.status_code}", response.reason or "")
        limit = self.config.max_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError("too large", f"{declared} bytes declared, over --max-mb ({limit} bytes)")
        deadline = time.monotonic() + 3 * self.config.timeout
        chunks, size = [], 0
        for chunk in response.iter_content(chunk_size=64 * 1024):
            size += len(chunk)
            if size > limit:
                raise FetchError("too large", f"over --max-mb ({limit} bytes)")
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"body still arriving after {3 * self.config.timeout:g}s")
            if self.stop.is_set():
                raise Cancelled()
            chunks.append(chunk)
        body = b"".join(chunks)
        if declared and declared.isdigit() and "Content-Encoding" not in response.headers and len(body) < int(declared):
            raise FetchError("truncated body", f"{len(body)} of {declared} bytes")
        return body
