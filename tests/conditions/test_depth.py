"""Depth maps: loading by path, batched inference, one normalisation per clip, errors."""

import numpy as np
import pytest

from stylevid.conditions.depth import (
    DepthAnnotator,
    depth_maps,
    normalize_depth_per_clip,
    tiny_depth_annotator,
)
from stylevid.errors import UserInputError


def clip(count=3, height=40, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def tiny_dpt_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-dpt")
    annotator = tiny_depth_annotator(seed=0)
    annotator.model.save_pretrained(folder)
    annotator.image_processor.save_pretrained(folder)
    return folder


def test_loads_a_depth_model_from_a_local_folder(tiny_dpt_folder):
    loaded = DepthAnnotator.from_pretrained(str(tiny_dpt_folder), local_files_only=True)
    frames = clip()
    # Same weights as the in-memory model it was saved from.
    np.testing.assert_allclose(loaded.predict(frames), tiny_depth_annotator(seed=0).predict(frames), rtol=1e-5, atol=1e-6)


def test_maps_are_three_equal_uint8_channels_at_frame_size():
    maps = tiny_depth_annotator()(clip(count=3, height=40, width=64))
    assert maps.shape == (3, 40, 64, 3) and maps.dtype == np.uint8
    assert (maps[..., 0] == maps[..., 1]).all() and (maps[..., 0] == maps[..., 2]).all()
    # One scale for the clip: its extremes reach 0 and 255 somewhere, not in every frame necessarily.
    assert maps.min() == 0 and maps.max() == 255


def test_maps_are_the_clip_normalised_prediction():
    annotator = tiny_depth_annotator()
    frames = clip(count=4)
    raw = annotator.predict(frames)
    assert raw.shape == (4, 40, 64) and raw.dtype == np.float32
    expected = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(annotator(frames)[..., 0], expected)


def test_batch_size_does_not_change_the_prediction():
    frames = clip(count=5)
    one_batch = tiny_depth_annotator(batch_size=8).predict(frames)
    small_batches = tiny_depth_annotator(batch_size=2).predict(frames)
    # Batched matmuls round differently; 1e-3 is ~1e-5 of this model's depth range (~200).
    np.testing.assert_allclose(small_batches, one_batch, rtol=1e-4, atol=1e-3)


def test_per_clip_normalisation_keeps_relative_levels_between_frames():
    ramp = np.linspace(0.0, 1.0, 16 * 16).reshape(16, 16)
    depth = np.stack([ramp, 0.5 * ramp])  # the second frame: everything twice as far
    maps = normalize_depth_per_clip(depth)
    assert maps.dtype == np.uint8
    assert maps[0].max() == 255 and maps[1].max() == 128
    np.testing.assert_allclose(maps[1].astype(float), maps[0] / 2.0, atol=1.0)
    # Per-frame normalisation would have stretched both frames to 0..255 and lost the difference.
    per_frame = np.stack([normalize_depth_per_clip(frame[None])[0] for frame in depth])
    assert per_frame[1].max() == 255


def test_constant_depth_maps_to_zeros():
    assert (normalize_depth_per_clip(np.full((2, 4, 4), 3.0)) == 0).all()


def test_depth_maps_uses_a_given_annotator():
    annotator = tiny_depth_annotator()
    frames = clip(count=2)
    np.testing.assert_array_equal(depth_maps(frames, annotator=annotator), annotator(frames))


def test_missing_local_folder_names_the_setting_to_pass(tmp_path):
    with pytest.raises(UserInputError, match=r"annotator.path .*missing-model does not exist; pass annotator.path="):
        DepthAnnotator.from_pretrained(str(tmp_path / "missing-model"))


def test_model_absent_offline_names_the_setting_to_pass():
    with pytest.raises(UserInputError, match=r"annotator.path=nobody/no-such-depth-model is not in the local cache and the hub is offline .*; pass annotator.path="):
        DepthAnnotator.from_pretrained("nobody/no-such-depth-model", local_files_only=True)
