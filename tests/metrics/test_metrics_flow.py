"""Flow-based metrics (OpenCV DIS): known translations, occlusion test, static and noisy videos."""

import cv2
import numpy as np
import pytest

from stylevid.errors import UserInputError
from stylevid.metrics.flow import (
    backward_warp,
    consistency_mask,
    dis_flow,
    motion,
    temporal_flicker,
    warp_error,
)


def _texture(height, width, seed=0):
    """A smooth random RGB texture: trackable by DIS, unlike white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 4, width // 4, 3)).astype(np.float32)
    image = cv2.GaussianBlur(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), (0, 0), 1.0)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _translating_video(num_frames=3, shift=3, width=100, seed=3):
    """Content moving right by `shift` px per frame: frame_t(x) = frame_{t+1}(x + shift)."""
    big = _texture(96, width + 2 * shift * num_frames, seed)
    start = shift * num_frames
    crops = [big[:, start - shift * t : start - shift * t + width] for t in range(num_frames)]
    return np.ascontiguousarray(np.stack(crops))


def _add_noise(video, sigma, seed=1):
    noise = np.random.default_rng(seed).normal(0, sigma * 255, video.shape)
    return np.clip(video.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def test_dis_recovers_a_known_translation():
    video = _translating_video(num_frames=2, shift=3)
    flow = dis_flow(video[0], video[1])
    interior = flow[16:-16, 16:-16].reshape(-1, 2).mean(axis=0)
    assert interior[0] == pytest.approx(3.0, abs=0.5)
    assert interior[1] == pytest.approx(0.0, abs=0.5)


def test_static_video_has_zero_error_flicker_and_motion():
    static = np.stack([_texture(64, 80)] * 4)
    assert warp_error(static) == 0.0
    assert temporal_flicker(static) == 0.0
    assert motion(static) == pytest.approx(0.0, abs=0.05)


def test_error_and_flicker_grow_monotonically_with_noise():
    static = np.stack([_texture(64, 80)] * 4)
    levels = [0.0, 0.02, 0.05, 0.1]
    warp = [warp_error(_add_noise(static, s)) for s in levels]
    flicker = [temporal_flicker(_add_noise(static, s)) for s in levels]
    assert warp[0] == 0.0 and flicker[0] == 0.0
    assert all(a < b for a, b in zip(warp, warp[1:])), warp
    assert all(a < b for a, b in zip(flicker, flicker[1:])), flicker
    # squared error of two independent noises is ~ 2 sigma^2 (less, where flow chases the noise)
    assert 0 < warp[-1] < 2 * 0.1**2 * 1.1


def test_motion_compensation_separates_warp_error_from_flicker():
    video = _translating_video(num_frames=3, shift=3)
    assert motion(video) == pytest.approx(3.0, abs=0.5)
    assert warp_error(video) < 1e-3  # the motion is explained by the flow
    assert temporal_flicker(video) > 0.05  # raw differences are not


def test_backward_warp_with_constant_flow_is_a_shift():
    image = _texture(32, 40)
    flow = np.zeros((32, 40, 2), np.float32)
    flow[..., 0] = 2.0  # warped(x) = image(x + 2)
    warped = backward_warp(image, flow)
    np.testing.assert_array_equal(warped[:, :-2], image[:, 2:])


def test_consistency_mask_forward_backward_rule():
    height, width = 16, 20
    forward = np.zeros((height, width, 2), np.float32)
    forward[..., 0] = 3.0
    consistent = consistency_mask(forward, -forward)
    # consistent everywhere the target x + 3 stays inside the image
    assert consistent[:, : width - 3].all()
    assert not consistent[:, width - 2 :].any()
    # backward flow that does not undo the forward flow: |f + b|^2 = 36 > 0.01 * 18 + 0.5
    assert not consistency_mask(forward, forward).any()
    # small disagreement within the 0.5 px^2 slack passes
    assert consistency_mask(forward, -forward + 0.3)[:, : width - 3].all()


def test_a_single_frame_is_a_user_error():
    with pytest.raises(UserInputError, match="at least 2 frames"):
        warp_error(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(UserInputError, match="uint8"):
        temporal_flicker(np.zeros((3, 8, 8, 3), np.float32))
