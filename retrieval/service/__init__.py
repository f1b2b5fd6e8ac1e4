"""The search service: an HTTP API and a page over a ``SearchEngine`` (``python -m retrieval.serve``)."""

from .app import create_app
from .batching import Batcher, Comparison
from .config import ServiceConfig

__all__ = ["Batcher", "Comparison", "ServiceConfig", "create_app"]
