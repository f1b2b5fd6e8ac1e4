"""Helpers every stage shares: atomic, durable file writes, one-writer-per-output locks, the checked manifest reader."""

from .atomic import atomic_path, atomic_write, check_replaceable_folder, fsync_dir, remove_stale_temps
from .lock import LockHeld, WriterLock
from .manifest import Manifest, ManifestEntry, ManifestError, iter_manifest, read_manifest

__all__ = ["LockHeld", "Manifest", "ManifestEntry", "ManifestError", "WriterLock", "atomic_path", "atomic_write",
           "check_replaceable_folder", "fsync_dir", "iter_manifest", "read_manifest", "remove_stale_temps"]
