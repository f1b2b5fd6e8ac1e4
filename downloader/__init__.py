"""Street2Shop downloader: read the metadata, fetch the photos (URLs, a mirror folder or archive), crop street photos to their boxes."""

from .archives import ArchiveError
from .download import DownloadConfig, DownloadSummary, download
from .fetch import FetchConfig
from .images import MAX_PIXELS, ImageError
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
from .records import RecordError, read_jsonl

__all__ = [
    "CATEGORIES", "MAX_PIXELS", "SPLITS", "ArchiveError", "BBox", "DownloadConfig", "DownloadSummary",
    "FetchConfig", "ImageError", "Metadata", "MetadataError", "MetadataProblem", "RecordError", "ShopPhoto",
    "StreetPair", "download", "read_jsonl", "read_metadata", "read_photos",
]
