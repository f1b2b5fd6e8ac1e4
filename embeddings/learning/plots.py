"""Training curves as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from common import atomic_path


def plot_training(history: dict[str, list[float]], raw: dict[str, float], path: Path) -> None:
    """Loss per epoch, and validation top-1/top-10 per epoch beside the raw vectors' (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, history["loss"], marker="o")
    left.set(title="training loss", xlabel="epoch", ylabel="loss")
    for key, colour in (("top1", "tab:blue"), ("top10", "tab:orange")):
        right.plot(epochs, history[f"val_{key}"], marker="o", color=colour, label=f"head {key}")
        right.axhline(raw[key], linestyle="--", color=colour, label=f"raw vectors {key}")
    right.set(title="validation retrieval accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    right.legend(loc="lower right")
    figure.tight_layout()
    try:
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=100, format="png")
    finally:
        plt.close(figure)
