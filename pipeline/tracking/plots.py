"""Figures shared by the stages, drawn with matplotlib's file-only backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow artifacts

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def digit_grid(images: np.ndarray, titles: list[str], columns: int = 9):
    """A grid of square grayscale digits (rows of pixels in [0, 1]) with a title each.

    Drawn as one mosaic image on one axes: with a subplot per digit, matplotlib's layout
    of 36 axes took most of the evaluate stage's time."""
    side = int(round(np.sqrt(images.shape[1])))
    rows = max(1, -(-len(images) // columns))
    cell_w, cell_h = 1.2, 1.35  # inches a digit and its title take
    width = side + max(2, side // 4)  # pixels per cell, a margin between digits included
    height = int(round(width * cell_h / cell_w))
    mosaic = np.zeros((rows * height, columns * width), dtype=np.float32)
    fig = plt.figure(figsize=(columns * cell_w, rows * cell_h))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    for i, (image, title) in enumerate(zip(images, titles)):
        top = (i // columns) * height + (height - side)  # the title goes above the digit
        left = (i % columns) * width + (width - side) // 2
        mosaic[top : top + side, left : left + side] = image.reshape(side, side)
        ax.text(left + side / 2, top - 0.5, title, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
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
