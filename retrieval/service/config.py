"""The service's settings, validated once where the service starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceConfig:
    """How the search service runs.

    Args:
        index: the index file (``python -m retrieval.index``).
        host, port: where to listen; port 0 picks a free port.
        max_upload_mb: the largest request body (all photos of one request together), refused as it streams in.
        max_batch: the most photos embedded in one network call.
        batch_wait_ms: how long a batch waits for requests already arriving before it runs.
        head, weights: the head folder and backbone weights file, when they moved since the index was built.
        body_timeout_s: the longest wait for the next part of a request body; a stalled upload is refused (408).
        max_decoding: the most uploads decoded at once (a small compressed photo can decode to 100+ MB of pixels).
        max_pixels: the largest decoded photo (width x height); larger ones are refused as decompression bombs.
        cors_origins: web origins (``https://shop.example``) whose pages may call the API from the browser.
    """

    index: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 10.0
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    head: Path | None = None
    weights: str | None = None
    body_timeout_s: float = 30.0
    max_decoding: int = 4
    max_pixels: int = 40_000_000
    cors_origins: tuple[str, ...] = ()

    def validate(self) -> "ServiceConfig":
        """Raises ValueError naming the first bad setting; returns ``self``."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if not 0 < self.max_upload_mb <= 1024:
            raise ValueError(f"--max-upload-mb must be in (0, 1024], got {self.max_upload_mb}")
        if not 1 <= self.max_batch <= 1024:
            raise ValueError(f"--max-batch must be in 1..1024, got {self.max_batch}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError(f"--batch-wait-ms must be in 0..10000, got {self.batch_wait_ms}")
        if not 0 < self.body_timeout_s <= 3600:
            raise ValueError(f"--body-timeout-s must be in (0, 3600], got {self.body_timeout_s}")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"--cors-origin must be * or start with http:// or https://, got {origin!r}")
        if not 1 <= self.max_decoding <= 256:
            raise ValueError(f"--max-decoding must be in 1..256, got {self.max_decoding}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
