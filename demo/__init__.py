"""The main job on bundled sample data: a synthetic Street2Shop sample served from 127.0.0.1."""

from .sample import SampleConfig, make_sample, write_photos_txt
from .server import LoopbackServer, Route

__all__ = ["LoopbackServer", "Route", "SampleConfig", "make_sample", "write_photos_txt"]
