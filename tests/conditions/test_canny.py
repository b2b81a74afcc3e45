"""Canny maps: exactly OpenCV's Canny, as three identical 0/255 channels."""

import cv2
import numpy as np
import pytest

from stylevid.conditions.canny import canny_map, canny_maps
from stylevid.errors import UserInputError


def scene(seed=0, size=64):
    """A noisy background with a bright square: strong edges at the square, weak ones in the noise."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    cv2.rectangle(frame, (16, 16), (47, 47), (250, 200, 40), thickness=-1)
    return frame


def test_canny_map_equals_opencv_canny_in_three_channels():
    frame = scene()
    edges = cv2.Canny(frame, 100, 200)
    result = canny_map(frame, 100, 200)
    assert result.shape == (64, 64, 3) and result.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(result[:, :, channel], edges)
    assert set(np.unique(result)) == {0, 255}
    # The square's outline is found.
    assert result[16, 30, 0] == 255 or result[15, 30, 0] == 255


def test_thresholds_are_passed_through():
    frame = scene()
    loose, strict = canny_map(frame, 10, 20), canny_map(frame, 100, 200)
    np.testing.assert_array_equal(loose[:, :, 0], cv2.Canny(frame, 10, 20))
    assert (loose > 0).sum() > (strict > 0).sum()


def test_canny_maps_stacks_a_clip():
    frames = [scene(0), scene(1)]
    maps = canny_maps(frames)
    assert maps.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(maps[1][:, :, 0], cv2.Canny(frames[1], 100, 200))


def test_reversed_thresholds_are_a_user_error():
    with pytest.raises(UserInputError, match="low <= high"):
        canny_map(scene(), 200, 100)
