"""Search shop photos for a street photo: an index of shop embeddings, exact or approximate ranking, evaluation."""

from .engine import Match, SearchEngine
from .ranking import Ranker
from .store import IndexData, IndexFileError, load_index, save_index
from .topk import Report, evaluate
from .tuning import AnnConfig
from .writer import build_index, remove_products

__all__ = ["AnnConfig", "IndexData", "IndexFileError", "Match", "Ranker", "Report", "SearchEngine", "build_index",
           "evaluate", "load_index", "remove_products", "save_index"]
