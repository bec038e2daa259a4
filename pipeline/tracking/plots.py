"""Figures shared by the stages, drawn with matplotlib's file-only backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow artifacts

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
