"""Data augmentation: each training image distorted afresh every epoch (Simard et al. 2003).

A distortion maps every output pixel p back to a source point in the original image,

    source(p) = A (p − c) + c − t  +  α · smooth(u)(p)

with c the image centre, A a random affine map (rotation θ, scale s, shear φ), t a random
shift, and, for elastic distortion, u a field of uniform(−1, 1) displacements smoothed by a
Gaussian of width σ and scaled by α. The image is read at the source points by bilinear
interpolation (0 outside). Labels are untouched: only the pixels move.

Everything is vectorised over the batch: one einsum builds the source points of all
images, bilinear() reads them (what scipy.ndimage.map_coordinates does, faster). Every
random number comes from the generator passed in, so a seed fixes the distortions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .errors import EngineError

TWEAK = {"tweak": True}  # dataclass field metadata: a tweak, off in the classic recipe


@dataclass
class AugmentConfig:
    """Each a tweak (metadata "tweak"): non-zero, it switches a distortion on."""

    # pixels: t uniform in [−shift, shift] on each axis
    shift: float = field(default=0.0, metadata=TWEAK)
    # degrees: θ uniform in [−rotation, rotation]
    rotation: float = field(default=0.0, metadata=TWEAK)
    scale: float = field(default=0.0, metadata=TWEAK)  # s uniform in [1 − scale, 1 + scale]
    shear: float = field(default=0.0, metadata=TWEAK)  # degrees: φ uniform in [−shear, shear]
    # pixels: the scale α of the elastic displacement field (Simard et al. 2003)
    elastic_alpha: float = field(default=0.0, metadata=TWEAK)
    # pixels: the smoothing width σ of that field, which means nothing without it
    elastic_sigma: float = field(default=4.0, metadata={"applies_when": ("elastic_alpha",)})

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.metadata.get("tweak"))


def image_side(n_pixels: int) -> int:
    """The side of a square image of n_pixels (784 → 28, 64 → 8)."""
    side = int(round(n_pixels**0.5))
    if side * side != n_pixels:
        raise EngineError(f"augmentation needs square images; rows of {n_pixels} pixels are not")
    return side


def distort(
    images: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The rows of `images` (flattened square images) each randomly distorted; into out
    (which may be images itself) if given."""
    b, n_pixels = images.shape
    side = image_side(n_pixels)
    theta = np.deg2rad(rng.uniform(-config.rotation, config.rotation, b))
    phi = np.deg2rad(rng.uniform(-config.shear, config.shear, b))
    s = rng.uniform(1 - config.scale, 1 + config.scale, b)
    t = rng.uniform(-config.shift, config.shift, (b, 2))
    # A maps an output offset from the centre to a source offset: rotation · shear / scale.
    cos, sin = np.cos(theta), np.sin(theta)
    a = np.empty((b, 2, 2))
    a[:, 0, 0], a[:, 0, 1] = cos / s, (cos * np.tan(phi) - sin) / s
    a[:, 1, 0], a[:, 1, 1] = sin / s, (sin * np.tan(phi) + cos) / s
    centre = (side - 1) / 2
    grid = (np.indices((side, side)).reshape(2, -1) - centre).astype(images.dtype)
    # source = A (p − c) + c − t for every pixel p of every image: (b, 2, side²)
    source = a.astype(images.dtype) @ grid
    source += (centre - t).astype(images.dtype)[:, :, None]
    source = source.reshape(b, 2, side, side)
    if config.elastic_alpha:
        field = rng.uniform(-1, 1, (b, 2, side, side))
        smooth = gaussian_matrix(side, config.elastic_sigma)
        source += (config.elastic_alpha * (smooth @ field @ smooth.T)).astype(images.dtype)
    result = bilinear(images.reshape(b, side, side), source[:, 0], source[:, 1])
    if out is None:
        return result.reshape(b, n_pixels)
    out[...] = result.reshape(b, n_pixels)
    return out


def gaussian_matrix(side: int, sigma: float) -> np.ndarray:
    """G with G @ u @ Gᵀ = u smoothed by a Gaussian of width sigma, zero outside the image:
    scipy.ndimage.gaussian_filter(u, sigma, mode="constant", truncate=side) as two small
    matmuls per image, which is ~20× faster on a batch (tests compare the two)."""
    offsets = np.arange(side)[:, None] - np.arange(side)[None, :]
    radius = np.arange(-side, side + 1)
    return np.exp(-0.5 * (offsets / sigma) ** 2) / np.exp(-0.5 * (radius / sigma) ** 2).sum()


def bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """images[b] read at the points (rows[b], cols[b]) by bilinear interpolation, 0 outside:
    scipy.ndimage.map_coordinates(order=1, mode="grid-constant") as four gathers from a
    zero-bordered copy, ~10× faster on a batch (tests compare the two)."""
    b, side, _ = images.shape
    padded = np.zeros((b, side + 2, side + 2), dtype=images.dtype)
    padded[:, 1:-1, 1:-1] = images
    flat = padded.reshape(-1)
    r0, c0 = np.floor(rows), np.floor(cols)
    wr, wc = (rows - r0).astype(images.dtype), (cols - c0).astype(images.dtype)
    # Index i of the image is i + 1 of the padded copy; anything beyond lands on its zero ring.
    r0, c0 = r0.astype(np.intp) + 1, c0.astype(np.intp) + 1
    dr = (r0 >= 0) & (r0 <= side)  # the next row/column is inside the padded copy: step 1
    dc = (c0 >= 0) & (c0 <= side)
    np.clip(r0, 0, side + 1, out=r0)
    np.clip(c0, 0, side + 1, out=c0)
    i00 = r0 * (side + 2) + c0 + (np.arange(b) * (side + 2) ** 2)[:, None, None]
    i10 = i00 + dr * (side + 2)
    top = flat[i00] + wc * (flat[i00 + dc] - flat[i00])  # the two rows, read along the columns
    bottom = flat[i10] + wc * (flat[i10 + dc] - flat[i10])
    return top + wr * (bottom - top)
