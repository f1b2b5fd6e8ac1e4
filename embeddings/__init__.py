"""Image vectors: a pre-trained backbone (VGG19 fc2 by default), cached in HDF5; and a Siamese head over them."""

from .extraction.backbones import BACKBONES, Backbone, WeightsUnavailableError, get_backbone
from .extraction.pipeline import BuildConfig, BuildSummary, build
from .extraction.cache import (CacheError, CacheWriter, Vectors, iter_chunks, read_attrs, read_ids, read_rows,
                               read_vectors, write_vectors)
from .extraction.extractor import Extractor
from .learning.head import Calibration, Head, HeadConfig, build_head, load_head
from .learning.losses import contrastive_loss, triplet_loss
from .learning.fit import TrainConfig, TrainResult, train
from .learning.finetuning import FinetuneConfig, FinetuneResult, finetune
from .learning.tower import Tower, TowerConfig, build_tower, load_tower
from .learning.tower_extractor import TowerExtractor
from .extraction.shards import MergeSummary, in_shard, merge

__all__ = [
    "BACKBONES", "Backbone", "BuildConfig", "BuildSummary", "CacheError", "CacheWriter", "Calibration", "Extractor",
    "Head", "HeadConfig", "MergeSummary", "TrainConfig", "TrainResult", "build_head", "contrastive_loss", "load_head", "train",
    "triplet_loss",
    "Vectors", "WeightsUnavailableError", "build", "get_backbone", "in_shard", "iter_chunks", "merge", "read_attrs",
    "read_ids", "read_rows", "read_vectors", "write_vectors",
    "FinetuneConfig", "FinetuneResult", "Tower", "TowerConfig", "TowerExtractor", "build_tower", "finetune", "load_tower",
]
