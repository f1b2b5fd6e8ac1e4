"""Choose, train and tune a FAISS index for one category's rows, the way autofaiss does.

``auto`` keeps small categories exact, takes a graph index (HNSW) while vectors and graph fit the
memory budget, and an inverted file with product quantisation (IVF + PQ) when they do not. The index
is trained on a sample, then its search parameter (``efSearch`` or ``nprobe``) is raised until
recall@10 against exact search, on held-out rows used as queries (each one's own row left out),
reaches the target. FAISS is imported here and in ``ann`` only.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
PQ_SIZES = (64, 48, 32, 24, 16, 12, 8, 4)
ADD_BLOCK = 1 << 16  # rows converted and added to a FAISS index at a time
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str | int) -> int:
    """``4G``, ``512M``, ``1.5G`` or a number of bytes."""
    if isinstance(text, int):
        return text
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text).upper())
    if not found:
        raise ValueError(f"memory {text!r}: expected a size such as 4G, 512M or 1000000")
    return int(float(found.group(1)) * _UNITS[found.group(2)])


@dataclass
class AnnConfig:
    """How to index: ``method`` is ``exact``, ``auto`` or a FAISS factory string (``HNSW32``, ``IVF1024,PQ16``).

    Args:
        max_memory: bytes the FAISS indexes may take in all (``auto`` shares it by category size).
        target_recall: recall@10 against exact search that tuning must reach.
        exact_below: categories with fewer rows stay exact (a scan of them is already fast).
        train_rows: rows sampled to train a quantiser (at least 40 per IVF list are taken).
        tune_queries: held-out rows used as queries when tuning.
    """

    method: str = "exact"
    max_memory: int = 4 << 30
    target_recall: float = 0.95
    exact_below: int = 20_000
    train_rows: int = 100_000
    tune_queries: int = 300
    seed: int = 0

    def validate(self) -> None:
        if not self.method or not isinstance(self.method, str):
            raise ValueError(f"--ann must be exact, auto or a FAISS factory string, got {self.method!r}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"--target-recall must be in (0, 1], got {self.target_recall}")
        if self.max_memory <= 0:
            raise ValueError(f"--max-memory must be positive, got {self.max_memory}")
        if self.exact_below < 0 or self.train_rows < 1 or self.tune_queries < 1:
            raise ValueError(f"exact_below, train_rows and tune_queries must be positive, got {self}")

    def check_factory(self, dim: int) -> None:
        """Raise ValueError unless FAISS can make ``method`` (a factory string) for ``dim``-d vectors."""
        if self.method in ("exact", "auto"):
            return
        import faiss

        pq = re.search(r"(?:^|,)(?:IVF\d+,)?PQ(\d+)", self.method)
        if pq and not re.search(r"OPQ|PCA", self.method) and dim % int(pq.group(1)):
            raise ValueError(f"--ann {self.method!r}: product quantisation PQ{pq.group(1)} needs the vectors' "
                             f"dimension ({dim}) to be a multiple of {pq.group(1)}")
        try:
            faiss.index_factory(dim, self.method)
        except RuntimeError as error:
            raise ValueError(f"--ann {self.method!r}: not a FAISS factory string for {dim}-d vectors "
                             f"({faiss_reason(error)})") from None


def faiss_reason(error: RuntimeError) -> str:
    """The human part of a FAISS C++ error (``Error in <signature> at file:line: Error: 'cond' failed: why``)."""
    text = str(error).strip().splitlines()[-1]
    return text.rsplit("failed: ", 1)[-1].rsplit("Error: ", 1)[-1][:160]


def choose(rows: int, dim: int, budget: int, config: AnnConfig) -> str | None:
    """The factory string for ``rows`` vectors of ``dim`` within ``budget`` bytes; None for exact."""
    if config.method != "auto":
        return None if config.method == "exact" else config.method
    if rows < max(config.exact_below, 1):
        return None
    if rows * (4 * dim + 2 * 32 * 4 * 1.1) <= budget:
        return "HNSW32"
    nlist = 1 << max(4, min(16, round(math.log2(4 * math.sqrt(rows)))))
    while nlist > 16 and rows < 39 * nlist:
        nlist //= 2
    # past 4096 lists a flat coarse quantizer makes filling slow (each row is compared with every centroid:
    # 10M rows x 16384 lists); a graph over the centroids finds a row's list in a few hundred comparisons
    ivf = f"IVF{nlist}_HNSW32" if nlist > 4096 else f"IVF{nlist}"
    per_row = budget / rows - 8  # inverted lists keep an 8-byte id per row
    if per_row >= 4 * dim:
        return f"{ivf},Flat"
    for size in PQ_SIZES:
        if dim % size == 0 and size <= per_row and size < dim:
            return f"{ivf},PQ{size}"
    raise ValueError(f"--max-memory {budget} bytes cannot hold an index of {rows} vectors of {dim} dimensions "
                     f"(product quantisation needs at least {min(PQ_SIZES)} + 8 bytes a row)")


def knob(index: Any) -> str | None:
    """The search parameter of this kind of index: ``efSearch`` (HNSW), ``nprobe`` (IVF) or None."""
    import faiss

    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    if isinstance(inner, faiss.IndexIVF):
        return "nprobe"
    return None


def knob_values(index: Any) -> tuple[int, ...]:
    import faiss

    name = knob(index)
    if name == "efSearch":
        return EF_SEARCH
    if name == "nprobe":
        nlist = faiss.extract_index_ivf(index).nlist
        return tuple(sorted({min(nlist, 1 << p) for p in range(0, int(math.log2(nlist)) + 1)} | {nlist}))
    return (0,)


def for_faiss(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32 rows as FAISS sees them: unit length for cosine (L2 then orders like cosine), as they are for
    Euclidean."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1)
    return vectors


def train(vectors: np.ndarray, metric: str, factory: str, config: AnnConfig, held: np.ndarray) -> Any:
    """A FAISS index of ``factory`` trained on a sample (held-out rows left out), with every row added a block
    at a time (``vectors`` may be memory-mapped: never copied whole)."""
    import faiss

    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_L2)
    for level in (index, faiss.downcast_index(index)):
        if hasattr(level, "do_polysemous_training"):
            level.do_polysemous_training = False  # Hamming codes we never use: minutes of training on 2 cores
        if hasattr(level, "pq"):  # FAISS's k-means is slow on short sub-vectors: 16k points per codebook suffice
            level.pq.cp.max_points_per_centroid = 64
    if not index.is_trained:
        rng = np.random.default_rng(config.seed)
        pool = np.setdiff1d(np.arange(len(vectors)), held)
        ivf = factory.startswith("IVF") and faiss.extract_index_ivf(index)
        wanted = max(config.train_rows, 40 * ivf.nlist if ivf else 0)
        sample = np.sort(rng.choice(pool, size=min(len(pool), wanted), replace=False))
        index.train(for_faiss(vectors[sample], metric))
    for start in range(0, len(vectors), ADD_BLOCK):
        index.add(for_faiss(vectors[start:start + ADD_BLOCK], metric))
    return index


def depth(k: int) -> int:
    """Candidates FAISS proposes for k results; their exact distances then pick the k."""
    return max(2 * k, k + 16)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Share of each query's true ``k`` nearest found among ``found``'s first ``k`` (own row removed)."""
    hits = [len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth)]
    return float(np.sum(hits) / (k * len(truth)))


def _without_self(rows: np.ndarray, own: np.ndarray, k: int) -> list[list[int]]:
    return [[int(r) for r in row if r != self_row and r >= 0][:k] for row, self_row in zip(rows, own)]


def tune(index: Any, vectors: np.ndarray, metric: str, held: np.ndarray, target: float,
         k: int = 10) -> dict[str, Any]:
    """Raise the search parameter until recall@k on the ``held`` rows reaches ``target``; returns the
    parameter, the recall measured and the median single-query time (ms)."""
    from .ranking import Ranker

    rows = np.ascontiguousarray(vectors[held], dtype=np.float32)
    queries = for_faiss(rows, metric)
    ranker = Ranker(vectors, metric)  # reads memory-mapped rows a chunk at a time
    truth_rows, _ = ranker.search(rows, min(k + 1, len(vectors)))
    truth = _without_self(truth_rows, held, k)
    name, chosen = knob(index), None
    for value in knob_values(index):
        params = search_params(index, value)
        _, found = index.search(queries, min(depth(k) + 1, len(vectors)), params=params)
        distances = np.where(found >= 0, ranker.exact(rows, np.clip(found, 0, None)), np.inf)
        found = np.take_along_axis(found, np.lexsort((found, distances), axis=1), axis=1)  # as queries rank them
        recall = recall_at(_without_self(found, held, k), truth, k)
        logger.info("%s=%s: recall@%d %.4f", name, value, k, recall)
        chosen = (value, recall)
        if recall >= target:
            break
    value, recall = chosen
    if recall < target:
        logger.warning("recall@%d %.3f at the largest %s (%s) is below the target %.3f", k, recall, name, value, target)
    params = search_params(index, value)
    times = []
    for query in queries[: min(len(queries), 200)]:
        began = time.perf_counter()
        index.search(query[None], depth(k), params=params)
        times.append(time.perf_counter() - began)
    return {"param": name, "value": int(value), "recall": round(recall, 4), "query_ms": round(1000 * float(np.median(times)), 4),
            "tune_queries": int(len(held))}


def search_params(index: Any, value: int, selector: Any = None) -> Any:
    """FAISS search parameters for ``index`` with its knob set to ``value`` and an optional ID selector."""
    import faiss

    name = knob(index)
    if name == "efSearch":
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(value)
    elif name == "nprobe":
        params = faiss.SearchParametersIVF()
        params.nprobe = int(value)
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def build_part(vectors: np.ndarray, metric: str, factory: str, config: AnnConfig) -> tuple[Any, dict[str, Any]]:
    """Train, fill and tune one FAISS index over ``vectors`` (rows as stored, compared by ``metric``); returns it
    and its record."""
    began = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    # at most half the rows held out, so that a small category still has rows to train on
    held = np.sort(rng.choice(len(vectors), size=min(max(1, len(vectors) // 2), config.tune_queries), replace=False))
    try:
        index = train(vectors, metric, factory, config, held)
    except RuntimeError as error:
        raise ValueError(f"--ann {factory!r} cannot be trained on {len(vectors)} rows: {faiss_reason(error)}") from None
    built = time.perf_counter() - began
    tuned = tune(index, vectors, metric, held, config.target_recall)
    return index, {"factory": factory, "rows": int(len(vectors)), "trained_rows": int(len(vectors)), "added_rows": 0,
                   "build_s": round(built, 2), **tuned}
