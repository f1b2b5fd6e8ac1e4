"""Top-k accuracy as the Street2Shop paper reports it: for each test street crop, whether a shop photo of its
product is among the first k shop photos ranked within its category; per category and overall, for the
raw backbone vectors beside the trained head."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from common import atomic_path, read_manifest
from embeddings.extraction.cache import read_ids, read_rows
from embeddings.learning.metrics import topk_accuracy

from .engine import SearchEngine
from .ranking import Ranker
from .store import IndexData

KS: tuple[int, ...] = (1, 5, 10, 20, 50)


@dataclass
class Report:
    """``accuracy[method][category][k]``; ``queries[category]``; ``"all"`` pools every category; ``notes`` say
    what was left out (a missing baseline, skipped manifest lines)."""

    accuracy: dict[str, dict[str, dict[int, float]]]
    queries: dict[str, int]
    ks: tuple[int, ...]
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """One block per method: a row per category, a column per k; then the notes."""
        names = {"raw": "raw backbone vectors (cosine)", "head": "trained head"}
        blocks = []
        for method, by_category in self.accuracy.items():
            lines = [f"{names.get(method, method):<32}" + "".join(f"{'top-' + str(k):>8}" for k in self.ks),
                     f"{'category (queries)':<32}"]
            for category, count in self.queries.items():
                lines.append(f"{category + f' ({count})':<32}" + "".join(f"{by_category[category][k]:>8.3f}"
                                                                          for k in self.ks))
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks + [f"note: {note}" for note in self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "queries": self.queries, "notes": self.notes,
                "accuracy": {m: {c: {str(k): v for k, v in by_k.items()} for c, by_k in by_cat.items()}
                             for m, by_cat in self.accuracy.items()}}


Search = Callable[[np.ndarray, int, str], np.ndarray]  # (queries, depth, category) -> gallery rows


def _ranks(search: Search, queries: np.ndarray, labels: np.ndarray, gallery_labels: np.ndarray,
           category: str, depth: int) -> np.ndarray:
    """1-based rank of the first gallery photo of each query's product among the top ``depth`` (0: not there)."""
    ranks = np.zeros(len(queries), dtype=np.int64)
    for begin in range(0, len(queries), 256):
        rows = search(queries[begin:begin + 256], depth, category)
        hits = (rows >= 0) & (gallery_labels[np.clip(rows, 0, None)] == labels[begin:begin + 256, None])
        ranks[begin:begin + 256] = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    return ranks


def _raw_baseline(engine: SearchEngine, vectors_path: Path, position: dict[str, int],
                  notes: list[str]) -> Search | None:
    """Cosine ranking of the index's shop photos by their cached backbone vectors, one category read at a
    time; None (and a note) when some of them are not in the cache."""
    index = engine.index
    rows = np.array([position.get(key, -1) for key in index.id_list()], dtype=np.int64)
    if (rows < 0).any():
        notes.append(f"raw baseline left out: {int((rows < 0).sum())} of the index's {len(rows)} shop photos "
                     f"have no vector in {vectors_path}")
        return None
    loaded: dict[str, Ranker] = {}

    def search(queries: np.ndarray, depth: int, category: str) -> np.ndarray:
        start, stop = engine.slices[category]
        if category not in loaded:
            loaded.clear()  # one category's raw vectors in memory at a time
            loaded[category] = Ranker(read_rows(vectors_path, rows[start:stop]).vectors, "cosine")
        return loaded[category].search(queries, depth)[0] + start

    return search


def evaluate(index_path: str | Path, vectors_path: str | Path, manifest: str | Path, split: str = "test",
             ks: Sequence[int] = KS, head: str | Path | None = None, strict: bool = False) -> Report:
    """Rank every ``split`` street crop that has a cached vector against the index, within its category;
    only the rows needed are read from the cache.

    Raises:
        FileNotFoundError, IndexFileError, CacheError, ManifestError: named inputs.
        ValueError: no street crop of ``split`` with a vector and an indexed category.
    """
    vectors_path = Path(vectors_path)
    if not vectors_path.is_file():
        raise FileNotFoundError(f"{vectors_path}: vector cache does not exist")
    checked = read_manifest(manifest, strict=strict)
    engine = SearchEngine.load(index_path, head=head)
    index: IndexData = engine.index
    expected = {k: v for k, v in index.attrs["backbone"].items() if k != "weights_file"}
    position = {key: row for row, key in enumerate(read_ids(vectors_path, expected))}
    queries = [e for e in checked.entries if e.kind == "street" and e.split == split
               and e.path in position and e.category in engine.slices]
    if not queries:
        raise ValueError(f"{manifest}: no {split} street crop with a cached vector in the index's categories "
                         f"({', '.join(engine.slices)})")
    notes = [f"{len(checked.problems)} bad manifest lines skipped (first: {checked.problems[0]})"] if checked.problems else []
    query_raw = read_rows(vectors_path, np.array([position[e.path] for e in queries], dtype=np.int64)).vectors

    def ranked(queries_: np.ndarray, depth: int, category: str) -> np.ndarray:
        start, stop = engine.slices[category]
        return engine.ranker.search(queries_, depth, start, stop)[0]

    methods: dict[str, tuple[Search, np.ndarray]] = {}
    if engine.head is None:
        methods["raw"] = (ranked, query_raw)  # the index holds the raw vectors: it is the baseline
    else:
        baseline = _raw_baseline(engine, vectors_path, position, notes)
        if baseline is not None:
            methods["raw"] = (baseline, query_raw)
        methods["head"] = (ranked, engine.embed_vectors(query_raw))
    return _report(methods, queries, engine, ks, notes)


def _report(methods: dict[str, tuple[Search, np.ndarray]], queries: list[Any], engine: SearchEngine,
            ks: Sequence[int], notes: list[str]) -> Report:
    categories = np.array([e.category for e in queries])
    labels = np.array([e.product for e in queries])
    accuracy: dict[str, dict[str, dict[int, float]]] = {}
    counts = {str(c): int((categories == c).sum()) for c in sorted(set(categories))}
    for method, (search, embedded) in methods.items():
        all_ranks = np.zeros(len(queries), dtype=np.int64)
        for category in counts:
            start, stop = engine.slices[category]
            members = np.flatnonzero(categories == category)
            all_ranks[members] = _ranks(search, embedded[members], labels[members], engine.index.products,
                                        category, min(max(ks), stop - start))
        accuracy[method] = {c: topk_accuracy(all_ranks[categories == c], ks) for c in counts}
        accuracy[method]["all"] = topk_accuracy(all_ranks, ks)
    counts["all"] = len(queries)
    return Report(accuracy, counts, tuple(ks), notes)


def write_report(report: Report, out: str | Path) -> tuple[Path, Path]:
    """``out/metrics.json`` and ``out/topk.png`` (accuracy against k, one curve per category and method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.json"
    with atomic_path(metrics) as temp:
        temp.write_text(json.dumps(report.to_dict(), indent=2))
    figure, axes = plt.subplots(1, len(report.accuracy), figsize=(6 * len(report.accuracy), 4.5), squeeze=False)
    for axis, (method, by_category) in zip(axes[0], report.accuracy.items()):
        for category, by_k in by_category.items():
            axis.plot(report.ks, [by_k[k] for k in report.ks], marker="o", label=f"{category} ({report.queries[category]})",
                      linewidth=3 if category == "all" else 1.5, color="black" if category == "all" else None)
        axis.set(title=f"top-k accuracy: {method}", xlabel="k", ylabel="accuracy", ylim=(0, 1.02), xscale="log")
        axis.set_xticks(report.ks, [str(k) for k in report.ks])
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    plot = out / "topk.png"
    with atomic_path(plot) as temp:
        figure.savefig(temp, dpi=100, format="png")
    plt.close(figure)
    return metrics, plot
