"""Search shop photos for a street photo: an index of shop embeddings, exact fast ranking, evaluation."""

from .engine import Match, SearchEngine
from .topk import Report, evaluate
from .store import IndexData, IndexFileError, build_index, load_index, save_index
from .ranking import Ranker

__all__ = ["IndexData", "IndexFileError", "Match", "Ranker", "Report", "SearchEngine", "build_index", "evaluate",
           "load_index", "save_index"]
