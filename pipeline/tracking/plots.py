"""Figures shared by the stages, drawn with matplotlib's file-only backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow artifacts

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def digit_grid(images: np.ndarray, titles: list[str], columns: int = 9):
    """A grid of square grayscale digits (rows of pixels in [0, 1]) with a title each."""
    side = int(round(np.sqrt(images.shape[1])))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.35), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image.reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def layer_label(hidden_sizes: str) -> str:
    """'[16, 16]' (a logged param) → '16-16'."""
    return "-".join(s.strip() for s in str(hidden_sizes).strip("[]").split(","))


def learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], title: str):
    """Train and validation accuracy by epoch, one line per run and split on one chart:
    curves = {run label: {metric: [(epoch, value), ...]}} (a pair of runs of one config,
    ours and scikit-learn's; or the best configs of a sweep)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (label, metrics) in enumerate(curves.items()):
        for metric, style in (("val_accuracy", "-"), ("train_accuracy", ":")):
            points = metrics.get(metric) or []
            if points:
                epochs, values = zip(*points)
                split = "val" if metric.startswith("val") else "train"
                ax.plot(epochs, values, style, color=f"C{i}", label=f"{label} ({split})")
    ax.set(xlabel="epoch", ylabel="accuracy", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
