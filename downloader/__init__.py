"""Street2Shop downloader: read the metadata, fetch the photos, crop street photos to their boxes."""

from .download import DownloadConfig, DownloadSummary, download
from .fetch import FetchConfig
from .images import ImageError
from .metadata import (
    CATEGORIES,
    SPLITS,
    BBox,
    Metadata,
    MetadataError,
    MetadataProblem,
    ShopPhoto,
    StreetPair,
    read_metadata,
    read_photos,
)
from .records import read_jsonl

__all__ = [
    "CATEGORIES", "SPLITS", "BBox", "DownloadConfig", "DownloadSummary", "FetchConfig", "ImageError",
    "Metadata", "MetadataError", "MetadataProblem", "ShopPhoto", "StreetPair", "download",
    "read_jsonl", "read_metadata", "read_photos",
]
