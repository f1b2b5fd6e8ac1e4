"""Top-k accuracy as the Street2Shop paper reports it: for each test street crop, whether a shop photo of its
product is among the first k shop photos ranked within its category; per category and overall, for the
raw backbone vectors beside the trained head."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from downloader.records import read_jsonl
from embeddings.extraction.cache import check_identity, read_vectors
from embeddings.learning.metrics import topk_accuracy

from .engine import SearchEngine
from .store import IndexData
from .ranking import Ranker

KS: tuple[int, ...] = (1, 5, 10, 20, 50)


@dataclass
class Report:
    """``accuracy[method][category][k]``; ``queries[category]``; ``"all"`` pools every category."""

    accuracy: dict[str, dict[str, dict[int, float]]]
    queries: dict[str, int]
    ks: tuple[int, ...]

    def table(self) -> str:
        """One block per method: a row per category, a column per k."""
        names = {"raw": "raw backbone vectors (cosine)", "head": "trained head"}
        blocks = []
        for method, by_category in self.accuracy.items():
            lines = [f"{names.get(method, method):<32}" + "".join(f"{'top-' + str(k):>8}" for k in self.ks),
                     f"{'category (queries)':<32}"]
            for category, count in self.queries.items():
                lines.append(f"{category + f' ({count})':<32}" + "".join(f"{by_category[category][k]:>8.3f}"
                                                                          for k in self.ks))
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "queries": self.queries,
                "accuracy": {m: {c: {str(k): v for k, v in by_k.items()} for c, by_k in by_cat.items()}
                             for m, by_cat in self.accuracy.items()}}


def _ranks(ranker: Ranker, queries: np.ndarray, labels: np.ndarray, gallery_labels: np.ndarray,
           start: int, stop: int, depth: int) -> np.ndarray:
    """1-based rank of the first gallery photo of each query's product among the top ``depth`` (0: not there)."""
    ranks = np.zeros(len(queries), dtype=np.int64)
    for begin in range(0, len(queries), 256):
        rows, _ = ranker.search(queries[begin:begin + 256], depth, start, stop)
        hits = gallery_labels[rows] == labels[begin:begin + 256, None]
        ranks[begin:begin + 256] = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    return ranks


def evaluate(index_path: str | Path, vectors_path: str | Path, manifest: str | Path, split: str = "test",
             ks: Sequence[int] = KS, head: str | Path | None = None) -> Report:
    """Rank every ``split`` street crop that has a cached vector against the index, within its category.

    Raises:
        FileNotFoundError, IndexFileError, CacheError: named inputs.
        ValueError: no street crop of ``split`` with a vector and an indexed category.
    """
    engine = SearchEngine.load(index_path, head=head)
    index: IndexData = engine.index
    vectors = read_vectors(vectors_path)
    check_identity(vectors_path, vectors.attrs, {k: v for k, v in index.attrs["backbone"].items() if k != "weights_file"})
    rows = vectors.positions()
    queries = [r for r in read_jsonl(manifest) if r["kind"] == "street" and r["split"] == split
               and r["path"] in rows and r["category"] in engine.slices]
    if not queries:
        raise ValueError(f"{manifest}: no {split} street crop with a cached vector in the index's categories "
                         f"({', '.join(engine.slices)})")
    raw_gallery = [rows.get(key) for key in index.id_list()]
    methods: dict[str, tuple[Ranker, np.ndarray]] = {}
    query_raw = vectors.vectors[[rows[r["path"]] for r in queries]]
    if all(row is not None for row in raw_gallery):
        methods["raw"] = (Ranker(vectors.vectors[raw_gallery], "cosine"), query_raw)
    if engine.head is not None:
        methods["head"] = (engine.ranker, engine.embed_vectors(query_raw))
    categories = np.array([r["category"] for r in queries])
    labels = np.array([r["product"] for r in queries])
    depth = max(ks)
    accuracy: dict[str, dict[str, dict[int, float]]] = {}
    counts = {str(c): int((categories == c).sum()) for c in sorted(set(categories))}
    for method, (ranker, embedded) in methods.items():
        all_ranks = np.zeros(len(queries), dtype=np.int64)
        for category in counts:
            start, stop = engine.slices[category]
            members = np.flatnonzero(categories == category)
            all_ranks[members] = _ranks(ranker, embedded[members], labels[members], index.products, start, stop,
                                        min(depth, stop - start))
        accuracy[method] = {c: topk_accuracy(all_ranks[categories == c], ks) for c in counts}
        accuracy[method]["all"] = topk_accuracy(all_ranks, ks)
    counts["all"] = len(queries)
    return Report(accuracy, counts, tuple(ks))


def write_report(report: Report, out: str | Path) -> tuple[Path, Path]:
    """``out/metrics.json`` and ``out/topk.png`` (accuracy against k, one curve per category and method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.json"
    temp = out / ".metrics.json.part"
    temp.write_text(json.dumps(report.to_dict(), indent=2))
    os.replace(temp, metrics)
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
    figure.savefig(out / ".topk.part.png", dpi=100)
    plt.close(figure)
    os.replace(out / ".topk.part.png", plot)
    return metrics, plot



