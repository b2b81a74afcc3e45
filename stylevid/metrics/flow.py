"""Flow-based temporal metrics: warp error, temporal flicker, motion. No learned weights (OpenCV DIS flow).

- warp_error (Gen-1 Fig. 4: "mean squared error between frames warped with optical flow"; Lai et al. 2018
  "Learning blind video temporal consistency"): for each consecutive pair, flow t -> t+1 by DIS, frame t+1
  backward-warped onto frame t, pixels failing the forward-backward check (Sundaram et al. 2010, as used by
  Ruder et al. 2016) or landing outside the image masked out; the masked mean of the SQUARED difference
  (over pixels and RGB channels, intensities in [0, 1]) per pair, then averaged over pairs.
- temporal_flicker: mean absolute difference of consecutive frames, intensities in [0, 1] (no flow).
- motion: mean forward-flow magnitude in pixels over all pixels and pairs.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from stylevid.errors import UserInputError
from stylevid.metrics.common import check_video, to_unit_float

logger = logging.getLogger(__name__)

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def dis_flow(source: np.ndarray, target: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Dense flow [H, W, 2] (dx, dy) in pixels with source(x) ~ target(x + flow(x)); RGB uint8 inputs."""
    if preset not in _PRESETS:
        raise UserInputError(f"metrics.flow.preset={preset} is not one of {', '.join(_PRESETS)}")
    dis = cv2.DISOpticalFlow_create(_PRESETS[preset])
    gray_source = cv2.cvtColor(source, cv2.COLOR_RGB2GRAY)
    gray_target = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    return dis.calc(gray_source, gray_target, None)


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return grid_x + flow[..., 0], grid_y + flow[..., 1]


def backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """warped(x) = image(x + flow(x)), bilinear (cv2.remap); brings frame t+1 onto frame t with flow t -> t+1."""
    map_x, map_y = _sample_grid(flow)
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def consistency_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """True where the flow is reliable: forward-backward consistent and landing inside the image.

    Forward-backward test of Sundaram et al. 2010, with the constants Ruder et al. 2016 use for disocclusions,
    written from frame t's side (frame t+1 is warped onto t):
        |f(x) + b(x + f(x))|^2 < 0.01 (|f(x)|^2 + |b(x + f(x))|^2) + 0.5
    A flow that the reverse flow does not undo marks an occluded or mismatched pixel.
    """
    height, width = forward.shape[:2]
    map_x, map_y = _sample_grid(forward)
    backward_at_target = cv2.remap(backward, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
    round_trip = np.sum((forward + backward_at_target) ** 2, axis=-1)
    magnitudes = np.sum(forward**2, axis=-1) + np.sum(backward_at_target**2, axis=-1)
    consistent = round_trip < 0.01 * magnitudes + 0.5
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return consistent & inside


def pair_flows(frames: np.ndarray, preset: str = "medium") -> list[tuple[np.ndarray, np.ndarray]]:
    """(forward t -> t+1, backward t+1 -> t) flows for each consecutive pair; computed once, shared by metrics."""
    frames = check_video(frames)
    return [(dis_flow(a, b, preset), dis_flow(b, a, preset)) for a, b in zip(frames[:-1], frames[1:])]


def warp_error(frames: np.ndarray, flows=None, preset: str = "medium") -> float:
    """Masked mean squared photometric error after flow warping, [0, 1] intensities (lower is steadier).

    Pairs whose mask is empty (everything occluded) are skipped; NaN if every pair is.
    """
    frames = _need_pairs(frames, "warp_error")
    flows = pair_flows(frames, preset) if flows is None else flows
    unit = to_unit_float(frames)
    errors = []
    for t, (forward, backward) in enumerate(flows):
        mask = consistency_mask(forward, backward)
        if not mask.any():
            continue
        warped_next = backward_warp(unit[t + 1], forward)
        squared = np.mean((warped_next - unit[t]) ** 2, axis=-1)
        errors.append(float(squared[mask].mean()))
    if not errors:
        logger.warning("warp_error: every pixel of every pair failed the occlusion test; returning NaN")
        return math.nan
    return float(np.mean(errors))


def temporal_flicker(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames in [0, 1] intensity (no motion compensation)."""
    frames = _need_pairs(frames, "temporal_flicker")
    unit = to_unit_float(frames)
    return float(np.mean(np.abs(unit[1:] - unit[:-1])))


def motion(frames: np.ndarray, flows=None, preset: str = "medium") -> float:
    """Mean forward-flow magnitude in pixels (how much the video moves; ~0 for a still video)."""
    frames = _need_pairs(frames, "motion")
    flows = pair_flows(frames, preset) if flows is None else flows
    return float(np.mean([np.linalg.norm(forward, axis=-1).mean() for forward, _ in flows]))


def _need_pairs(frames, name: str) -> np.ndarray:
    frames = check_video(frames)
    if len(frames) < 2:
        raise UserInputError(f"{name} needs a video with at least 2 frames")
    return frames
