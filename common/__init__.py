"""Helpers every stage shares: atomic, durable file writes and one-writer-per-output locks."""

from .atomic import atomic_path, atomic_write, fsync_dir
from .lock import LockHeld, WriterLock

__all__ = ["LockHeld", "WriterLock", "atomic_path", "atomic_write", "fsync_dir"]
