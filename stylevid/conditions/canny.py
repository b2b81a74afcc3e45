"""Canny edge maps in the form the canny ControlNet was trained on.

As in the ControlNet canny example (and Text2Video-Zero's edge control): OpenCV's Canny on the RGB
frame itself, thresholds 100/200 by default, the single-channel 0/255 edge image repeated into three
channels.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from stylevid.errors import UserInputError

DEFAULT_LOW_THRESHOLD = 100
DEFAULT_HIGH_THRESHOLD = 200


def canny_map(
    frame: np.ndarray, low_threshold: float = DEFAULT_LOW_THRESHOLD, high_threshold: float = DEFAULT_HIGH_THRESHOLD
) -> np.ndarray:
    """One uint8 (H, W, 3) edge map, 255 on edges and 0 elsewhere, from a uint8 (H, W, 3) RGB frame."""
    _check_thresholds(low_threshold, high_threshold)
    # cv2.Canny takes a colour image directly (it follows the strongest channel's gradient), which
    # is how the ControlNet training maps were made; converting to grey first gives other edges.
    edges = cv2.Canny(frame, low_threshold, high_threshold)
    return np.repeat(edges[:, :, None], 3, axis=2)


def canny_maps(
    frames: Iterable[np.ndarray],
    low_threshold: float = DEFAULT_LOW_THRESHOLD,
    high_threshold: float = DEFAULT_HIGH_THRESHOLD,
) -> np.ndarray:
    """Edge maps for a clip: uint8 (N, H, W, 3)."""
    _check_thresholds(low_threshold, high_threshold)
    return np.stack([canny_map(frame, low_threshold, high_threshold) for frame in frames])


def _check_thresholds(low_threshold: float, high_threshold: float) -> None:
    if not 0 <= low_threshold <= high_threshold:
        raise UserInputError(
            f"canny thresholds need 0 <= low <= high, got low_threshold={low_threshold} high_threshold={high_threshold}"
        )
