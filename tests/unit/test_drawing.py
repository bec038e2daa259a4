"""A drawn digit becomes a training digit (data/drawing.py): MNIST's own normalisation."""

import numpy as np
from scipy import ndimage

from pipeline.data.drawing import as_training_image


def test_a_stroke_anywhere_is_scaled_to_20_pixels_and_centred_by_its_mass():
    canvas = np.zeros((56, 56))
    canvas[4:30, 40:44] = 1.0  # a short bar in the top right corner
    image = as_training_image(canvas).reshape(28, 28)
    rows = np.flatnonzero(image.max(axis=1) > 0.05)
    assert rows[-1] - rows[0] + 1 in (20, 21)  # the longer side fits the 20×20 box
    np.testing.assert_allclose(ndimage.center_of_mass(image), [13.5, 13.5], atol=0.6)
    assert image.max() == 1.0 and image.min() == 0.0
    assert image.dtype == np.float32


def test_the_aspect_ratio_is_kept_and_an_empty_canvas_stays_blank():
    canvas = np.zeros((56, 56))
    canvas[20:24, 8:48] = 1.0  # a wide, flat bar: 40 × 4
    image = as_training_image(canvas).reshape(28, 28)
    cols = np.flatnonzero(image.max(axis=0) > 0.05)
    rows = np.flatnonzero(image.max(axis=1) > 0.05)
    assert cols[-1] - cols[0] + 1 in (20, 21)
    assert rows[-1] - rows[0] + 1 <= 5  # not stretched to a square
    assert not as_training_image(np.zeros((56, 56))).any()


def test_for_the_8x8_digits_the_result_is_scaled_to_their_side():
    canvas = np.zeros((56, 56))
    canvas[10:46, 26:30] = 1.0
    image = as_training_image(canvas, side=8)
    assert image.shape == (64,) and image.max() == 1.0
    np.testing.assert_allclose(ndimage.center_of_mass(image.reshape(8, 8)), [3.5, 3.5], atol=0.6)
