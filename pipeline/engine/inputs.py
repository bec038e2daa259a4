"""What a trained network may be asked about: rows of pixels as it was trained on them.

A model trained on pixels in [0, 1] still answers NaN, infinity, a 0..255 image or a
negative one, with a confident digit that means nothing. A served model checks each
request here first and refuses such input with a message that says what it expects.
"""

from __future__ import annotations

import numpy as np

from .errors import EngineError

PIXEL_RANGE = (0.0, 1.0)  # every dataset of the pipeline is scaled to it (preprocess)


class InputError(EngineError):
    """Input a model was not trained for: the message names the problem and what is expected."""


def check_pixels(x, width: int, dtype=np.float32) -> np.ndarray:
    """`x` as a 2-D array of `dtype`, one row of `width` pixels in [0, 1] per image; raise
    InputError naming the first problem (shape, non-finite values, values out of range)."""
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(
            f"expected numbers: rows of {width} pixel values in [0, 1] ({e})"
        ) from None
    if x.ndim == 1 and x.size == width:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != width or len(x) == 0:
        raise InputError(
            f"expected rows of {width} pixel values (images of "
            f"{int(np.sqrt(width))}×{int(np.sqrt(width))} flattened), got shape {x.shape}"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise InputError(
            f"pixel values must be finite numbers: row {row}, pixel {col} is {x[row, col]}"
        )
    low, high = PIXEL_RANGE
    if x.min() < low or x.max() > high:
        hint = " (divide 0..255 pixels by 255)" if x.max() > high and x.max() <= 255 else ""
        raise InputError(
            f"pixel values must be in [{low:g}, {high:g}], as in training: got "
            f"values from {x.min():g} to {x.max():g}{hint}"
        )
    return x.astype(dtype, copy=False)


# What a served model answers per image: `{"params": {"output": "probabilities"}}` in the
# request picks the probability of each digit instead of the digit.
OUTPUTS = ("label", "probabilities")
DEFAULT_PARAMS = {"output": "label"}  # the signature's params (tracking/models.py)


def check_output(params: dict | None) -> str:
    """The answer a request asks for (params["output"], default "label"); InputError for
    anything else."""
    output = (params or {}).get("output", "label")
    if output not in OUTPUTS:
        raise InputError(f"params.output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output
