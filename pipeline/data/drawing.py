"""A digit drawn by hand, made to look like the digits a network was trained on.

MNIST's digits were "size normalized to fit in a 20x20 pixel box while preserving their
aspect ratio" (anti-aliased, so grey levels appear) and "centered in a 28x28 image by
computing the center of mass of the pixels" (LeCun et al.). A stroke drawn on a canvas
is none of that: anywhere, any size. as_training_image does the same steps to it, so the
network sees a drawn 7 as it saw the 7s it learned from. For a dataset of smaller images
(scikit-learn's 8×8 digits) the 28×28 result is then scaled down to its side.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MNIST_SIDE = 28  # the field
MNIST_BOX = 20  # the box the digit is scaled to fit
INK = 0.05  # a pixel darker than this is paper


def as_training_image(drawing: np.ndarray, side: int = MNIST_SIDE) -> np.ndarray:
    """The drawing (2-D, ink in [0, 1], white paper = 0) as side×side pixels in [0, 1],
    flattened: the ink's bounding box scaled to fit 20×20 (aspect kept, anti-aliased),
    placed so its centre of mass is the centre of a 28×28 field, the brightest pixel 1;
    then scaled to side×side. No ink gives a blank image."""
    image = np.clip(np.asarray(drawing, dtype=np.float64), 0.0, 1.0)
    rows = np.flatnonzero(image.max(axis=1) > INK)
    cols = np.flatnonzero(image.max(axis=0) > INK)
    if rows.size == 0:
        return np.zeros(side * side, dtype=np.float32)
    ink = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    boxed = _resize(ink, MNIST_BOX / max(ink.shape))
    field = np.zeros((MNIST_SIDE, MNIST_SIDE))
    cy, cx = ndimage.center_of_mass(boxed)
    top = int(round((MNIST_SIDE - 1) / 2 - cy))
    left = int(round((MNIST_SIDE - 1) / 2 - cx))
    top = min(max(top, 0), MNIST_SIDE - boxed.shape[0])  # stay inside the field
    left = min(max(left, 0), MNIST_SIDE - boxed.shape[1])
    field[top : top + boxed.shape[0], left : left + boxed.shape[1]] = boxed
    if side != MNIST_SIDE:
        field = _resize(field, side / MNIST_SIDE)
    field = np.clip(field, 0.0, None)
    peak = field.max()
    return (field / peak if peak > 0 else field).astype(np.float32).ravel()


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    """image scaled by `scale` (linear interpolation), smoothed first when shrinking so
    thin strokes are averaged, not skipped (anti-aliasing)."""
    if scale < 1:
        image = ndimage.gaussian_filter(image, sigma=0.5 / scale)
    shape = [max(1, min(MNIST_SIDE, int(round(n * scale)))) for n in image.shape]
    zoom = [new / old for new, old in zip(shape, image.shape)]
    return ndimage.zoom(image, zoom, order=1, grid_mode=True, mode="grid-constant")
